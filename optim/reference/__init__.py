"""The references: one pure-PyTorch function per rule, one module per rule, the numerical oracle for
everything else (optim.registry imports each from its module).

Each is the simplest per-tensor loop, fp32 math whatever the storage dtype (fp64 for fp64 params, as
torch.optim computes in a param's own dtype), and carries its equations and paper in its docstring. Signature: ``rule(params, grads, states, group)``, updating params and
the per-param state dicts in place.
"""
import torch


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in the dtype of the math: fp32 for fp32, bf16 and fp16 storage; fp64 stays fp64."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def coupled_gradient(g, theta, group):
    """torch.optim's prologue (the twin of ``kernels.coupled_gradient``): g ← −g when maximizing,
    then L2 weight decay coupled into the gradient, g ← g + λθ."""
    if group["maximize"]:
        g = -g
    return g + group["weight_decay"] * theta
