"""The references: one pure-PyTorch function per rule, one module per rule, the numerical oracle for
everything else (optim.registry imports each from its module).

Each is the simplest per-tensor loop, fp32 math whatever the storage dtype, and carries its equations
and paper in its docstring. Signature: ``rule(params, grads, states, group)``, updating params and
the per-param state dicts in place.
"""
