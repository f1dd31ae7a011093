import torch

from fusedoptim.optim.reference import upcast


def eg(params, grads, states, group):
    r"""Exponentiated gradient (Kivinen & Warmuth, "Exponentiated Gradient versus Gradient Descent for
    Linear Predictors", 1997), unnormalised, for non-negative parameters:

    .. math:: θ ← θ \odot \exp(−η g).

    A multiplicative update: θ ≥ 0 stays ≥ 0. No state.
    """
    lr = float(group["lr"])
    for param, grad in zip(params, grads):
        param.copy_(upcast(param) * torch.exp(-lr * upcast(grad)))
