"""The references: one pure-PyTorch function per rule, the numerical oracle for everything else.

Each is the simplest per-tensor loop, fp32 math whatever the storage dtype, and carries its equations
and paper in its docstring. Signature: ``rule(params, grads, states, group)``, updating params and
the per-param state dicts in place.
"""
from optim.reference.adam import adam, adamw
from optim.reference.lion import lion
from optim.reference.tiger import tiger

__all__ = ["adam", "adamw", "lion", "tiger"]
