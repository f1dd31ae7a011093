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
    then L2 weight decay coupled into the gradient, g ← g + λθ, only where λ ≠ 0 (as torch skips it:
    0·θ of an infinite θ would make the gradient NaN)."""
    if group["maximize"]:
        g = -g
    if group["weight_decay"] != 0:
        g = g + group["weight_decay"] * theta
    return g


def cautious(step: torch.Tensor, g: torch.Tensor, group) -> torch.Tensor:
    r"""Caution (Liang et al., "Cautious Optimizers: Improving Training with One Line of Code", 2024,
    Algorithm 2), where group["cautious"] (the twin of ``kernels.cautious``): the step u masked where it
    disagrees in sign with the gradient, and divided by the fraction of the whole tensor kept, floored
    at 1e-3 as in the paper:

    .. math:: φ = 1[u ⊙ g > 0], \qquad u ← u ⊙ φ / \max(\mathrm{mean}(φ), 10^{-3}).

    u is the rule's step before θ ← θ − u, without the weight decay, which is never masked."""
    if not group["cautious"]:
        return step
    agreement = (step * g > 0).to(step.dtype)
    return step * agreement / agreement.mean().clamp(min=1e-3)


def sign(x: torch.Tensor) -> torch.Tensor:
    """The sign of x, -1, 0 or +1, and NaN where x is NaN (the twin of ``kernels.sign``): torch.sign
    of NaN is 0 on the CPU but NaN on CUDA, so the oracle would depend on its device."""
    return torch.where(x.isnan(), x, torch.sign(x))


def group_tensor(group: dict, key: str, device) -> torch.Tensor:
    """group[key] as the 0-d fp32 tensor on ``device`` that a rule learns on the device (SGDHD's lr),
    made so the first time: a number, or a tensor of another dtype or device, is replaced by it."""
    value = group[key]
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or value.device != device or value.dim():
        group[key] = torch.as_tensor(value, dtype=torch.float32).reshape(()).to(device)
    return group[key]
