"""The references: one pure-PyTorch function per rule, one module per rule, the numerical oracle for
everything else (optim.registry imports each from its module).

Each is the simplest per-tensor loop, fp32 math whatever the storage dtype, and carries its equations
and paper in its docstring. Signature: ``rule(params, grads, states, group)``, updating params and
the per-param state dicts in place.
"""


def coupled_gradient(g, theta, group):
    """torch.optim's prologue (the twin of ``kernels.coupled_gradient``): g ← −g when maximizing,
    then L2 weight decay coupled into the gradient, g ← g + λθ."""
    if group["maximize"]:
        g = -g
    return g + group["weight_decay"] * theta
