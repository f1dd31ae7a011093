from fusedoptim.optim.reference import upcast
from fusedoptim.optim.reference.adam import adam_moments


def radam(params, grads, states, group):
    r"""RAdam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020), in
    torch.optim.RAdam's order.

    With g ← −g if maximize, and g ← g + λθ (L2, coupled), or θ ← θ(1 − ηλ) first with
    decoupled_weight_decay (as AdamW):

    .. math::
        m_t = β_1 m_{t-1} + (1-β_1) g_t, \qquad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,
        \hat m_t = \frac{m_t}{1-β_1^t}, \qquad
        ρ_∞ = \frac{2}{1-β_2} - 1, \qquad ρ_t = ρ_∞ - \frac{2 t β_2^t}{1-β_2^t},

        θ_t = θ_{t-1} - η\, \hat m_t\, \frac{\sqrt{1-β_2^t}}{\sqrt{v_t} + ε}\, r_t, \quad
        r_t = \sqrt{\frac{(ρ_t-4)(ρ_t-2)\,ρ_∞}{(ρ_∞-4)(ρ_∞-2)\,ρ_t}} \qquad \text{if } ρ_t > 5,

        θ_t = θ_{t-1} - η\, \hat m_t \qquad \text{otherwise (SGD with bias-corrected momentum).}

    ρ_t, the length of the approximated simple moving average, depends on t alone: every element of
    a tensor takes the same branch (with β2 = 0.999, the first five steps are un-adapted). ε is added
    to √v before √(1 − β2ᵗ) corrects it, unlike Adam's √v/√(1 − β2ᵗ) + ε.

    State per param: step (fp32 scalar tensor), exp_avg, exp_avg_sq.
    """
    lr, (beta1, beta2), eps = float(group["lr"]), map(float, group["betas"]), group["eps"]
    rho_inf = 2 / (1 - beta2) - 1  # the maximum length of the approximated SMA
    for param, grad, state in zip(params, grads, states):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        theta, g = upcast(param), upcast(grad)  # all math in fp32, whatever the storage dtype
        theta, g, exp_avg, exp_avg_sq = adam_moments(theta, g, upcast(state["exp_avg"]), upcast(state["exp_avg_sq"]),
                                                     group, group["decoupled_weight_decay"])
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        bias_corrected_exp_avg = exp_avg / bias_correction1  # m̂ = m/(1 − β1ᵗ)
        rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2  # the length of the SMA at step t
        if rho_t > 5:  # the variance of the adaptive lr is tractable: adapt, rectified
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
            adaptive_lr = bias_correction2**0.5 / (exp_avg_sq.sqrt() + eps)  # √(1 − β2ᵗ)/(√v + ε)
            theta = theta - bias_corrected_exp_avg * lr * adaptive_lr * rect  # torch's order, left to right
        else:  # too few steps for v to be trusted: the bias-corrected momentum alone
            theta = theta - bias_corrected_exp_avg * lr
        param.copy_(theta)
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq)
