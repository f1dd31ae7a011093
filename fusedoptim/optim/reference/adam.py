import torch

from fusedoptim.optim.reference import cautious, upcast


def adam_moments(theta, g, exp_avg, exp_avg_sq, group, decoupled: bool) -> tuple:
    """The Adam family's first half, in torch's order (Adam, AdamW, RAdam, NAdam), on fp32 tensors:
    g ← −g if maximize; weight decay, decoupled (θ ← θ(1 − ηλ)) or L2 into g, skipped at 0 as torch
    does (0·θ of an infinite θ is NaN); m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g². Returns
    (θ, g, m, v)."""
    lr, weight_decay = float(group["lr"]), group["weight_decay"]
    beta1, beta2 = map(float, group["betas"])
    if group["maximize"]:
        g = -g
    if weight_decay != 0:
        if decoupled:
            theta = theta * (1 - lr * weight_decay)  # decay θ before the update
        else:
            g = g + weight_decay * theta  # L2 added to the gradient
    exp_avg = exp_avg.lerp(g, 1 - beta1)  # m ← β1·m + (1 − β1)·g
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g  # v ← β2·v + (1 − β2)·g²
    return theta, g, exp_avg, exp_avg_sq


def adam(params, grads, states, group, decoupled_weight_decay=False):
    r"""Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015), in torch's order.

    With g ← −g if maximize, and g ← g + λθ (L2, coupled) unless the decay is decoupled (AdamW,
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019: θ ← θ(1 − ηλ) first):

    .. math::
        m_t = β_1 m_{t-1} + (1-β_1) g_t, \qquad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ (amsgrad) else } v_t,
        θ_t = θ_{t-1} - \frac{η}{1-β_1^t} \cdot \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-β_2^t} + ε}.

    With cautious, the step is masked by its agreement with g (``reference.cautious``; the decay is not).
    State per param: step (fp32 scalar tensor), exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad only).
    """
    lr, (beta1, beta2), eps = float(group["lr"]), map(float, group["betas"]), group["eps"]
    for param, grad, state in zip(params, grads, states):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        theta, g = upcast(param), upcast(grad)  # all math in fp32, whatever the storage dtype
        theta, g, exp_avg, exp_avg_sq = adam_moments(theta, g, upcast(state["exp_avg"]), upcast(state["exp_avg_sq"]),
                                                     group, decoupled_weight_decay)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        if group["amsgrad"]:
            max_exp_avg_sq = torch.maximum(upcast(state["max_exp_avg_sq"]), exp_avg_sq)  # v̂ ← max(v̂, v)
            state["max_exp_avg_sq"].copy_(max_exp_avg_sq)
            denom = max_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
        else:
            denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps  # √v / √(1 − β2ᵗ) + ε
        # θ ← θ − η/(1 − β1ᵗ) · m/denom, as ((η/(1 − β1ᵗ))·m)/denom: torch's order, where the product may overflow
        update = ((lr / bias_correction1) * exp_avg) / denom
        theta = theta - cautious(update, g, group)  # masked where it disagrees with g, with caution
        param.copy_(theta)
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq)


def adamw(params, grads, states, group):
    """AdamW: ``adam`` with decoupled weight decay; see its docstring."""
    adam(params, grads, states, group, decoupled_weight_decay=True)
