import torch

from fusedoptim.optim.reference import group_tensor, upcast


def sgdhd(params, grads, states, group):
    r"""SGD whose learning rate follows its hypergradient (Baydin, Cornish, Martínez Rubio, Schmidt &
    Wood, "Online Learning Rate Adaptation with Hypergradient Descent", ICLR 2018); β = hypergrad_lr:

    .. math::
        α ← α + β \langle g, g_{\mathrm{prev}} \rangle \text{ (over all params of the group)}, \qquad
        θ ← θ − α g, \qquad g_{\mathrm{prev}} ← g.

    α lives in group["lr"] as a 0-d fp32 tensor on the params' device. State per param: prev_grad.
    """
    lr = group_tensor(group, "lr", params[0].device)
    dot = sum((upcast(g) * upcast(state["prev_grad"])).sum() for g, state in zip(grads, states))
    lr.add_(group["hypergrad_lr"] * dot)  # the hypergradient step on α
    for param, grad, state in zip(params, grads, states):
        theta = upcast(param) - lr * upcast(grad)
        # g_prev before θ is written: a gradient that shares its param's memory would read the new θ
        state["prev_grad"].copy_(grad)
        param.copy_(theta)
