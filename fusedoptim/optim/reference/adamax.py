import torch

from fusedoptim.optim.reference import coupled_gradient, upcast


def adamax(params, grads, states, group):
    r"""Adamax (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1: Adam
    with the infinity norm in place of the second moment), as torch.optim.Adamax, in its order.
    With g ← −g if maximize and g ← g + λθ (L2):

    .. math::
        m_t = β_1 m_{t-1} + (1-β_1) g_t, \qquad u_t = \max(β_2 u_{t-1}, |g_t| + ε),
        θ_t = θ_{t-1} - \frac{η}{1-β_1^t} \cdot \frac{m_t}{u_t}.

    ε enters inside the max (torch's), not added to u afterwards as in the paper, so u ≥ ε.
    State per param: step (fp32 scalar tensor), exp_avg (m), exp_inf (u).
    """
    lr, (beta1, beta2), eps = float(group["lr"]), map(float, group["betas"]), group["eps"]
    for param, grad, state in zip(params, grads, states):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        theta, g = upcast(param), upcast(grad)  # all math in fp32, whatever the storage dtype
        g = coupled_gradient(g, theta, group)  # −g if maximizing, + λθ (L2)
        exp_avg = upcast(state["exp_avg"]).lerp(g, 1 - beta1)  # m ← β1·m + (1 − β1)·g
        exp_inf = torch.maximum(upcast(state["exp_inf"]) * beta2, g.abs() + eps)  # u ← max(β2·u, |g| + ε)
        clr = lr / (1 - beta1**step)  # η/(1 − β1ᵗ)
        # θ ← θ − clr·m/u, as (clr·m)/u: torch's addcdiv order, where the product may overflow
        theta = theta - (clr * exp_avg) / exp_inf
        param.copy_(theta)
        state["exp_avg"].copy_(exp_avg)
        state["exp_inf"].copy_(exp_inf)
