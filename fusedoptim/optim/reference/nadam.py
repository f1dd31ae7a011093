from fusedoptim.optim.reference import upcast
from fusedoptim.optim.reference.adam import adam_moments

# 0.96: the base of Dozat's momentum schedule μ_t (torch.optim.NAdam's constant)
MOMENTUM_SCHEDULE_BASE = 0.96


def momentum_coefficient(beta1: float, momentum_decay: float, step: float) -> float:
    """μ_t = β1·(1 − ½·0.96^(t·ψ)), in Python floats as torch computes it."""
    return beta1 * (1.0 - 0.5 * MOMENTUM_SCHEDULE_BASE ** (step * momentum_decay))


def advance_mu_product(group, step, mu_product) -> tuple:
    """Π_t = Π_{t−1}·μ_t for a device's packed steps, before the update (``Rule.scalar_updates``): μ_t in
    fp32 on the device, as torch rounds it to multiply its fp32 mu_product. β1 and ψ read each step: a
    scheduler may change them."""
    return (mu_product * momentum_coefficient(group["betas"][0], group["momentum_decay"], step),)


def nadam(params, grads, states, group):
    r"""NAdam (Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop), as
    torch.optim.NAdam. With g ← −g if maximize, then g ← g + λθ (L2), or θ ← θ(1 − ηλ) first with
    decoupled_weight_decay (NAdamW, Loshchilov & Hutter 2019), and ψ = momentum_decay:

    .. math::
        μ_t = β_1 (1 - \tfrac12 0.96^{tψ}), \qquad μ_{t+1} = β_1 (1 - \tfrac12 0.96^{(t+1)ψ}),
        \qquad Π_t = Π_{t-1} μ_t \ (Π_0 = 1),
        m_t = β_1 m_{t-1} + (1-β_1) g_t, \qquad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,
        d = \sqrt{v_t / (1-β_2^t)} + ε,
        θ_t = θ_{t-1} - \frac{η (1-μ_t)}{1-Π_t} \frac{g_t}{d} - \frac{η μ_{t+1}}{1-Π_t μ_{t+1}} \frac{m_t}{d}.

    State per param: step and mu_product (Π_t), fp32 scalar tensors as torch keeps them, exp_avg,
    exp_avg_sq. Π_t is advanced here in fp32 (``mu_product *= μ_t``, torch's op); the coefficients are
    Python floats of it, and each term is (coefficient·x)/d, torch's addcdiv_.
    """
    lr, (beta1, beta2), eps = float(group["lr"]), map(float, group["betas"]), group["eps"]
    momentum_decay = group["momentum_decay"]
    for param, grad, state in zip(params, grads, states):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        theta, g = upcast(param), upcast(grad)  # all math in fp32, whatever the storage dtype
        theta, g, exp_avg, exp_avg_sq = adam_moments(theta, g, upcast(state["exp_avg"]), upcast(state["exp_avg_sq"]),
                                                     group, group["decoupled_weight_decay"])
        mu = momentum_coefficient(beta1, momentum_decay, step)  # μ_t
        mu_next = momentum_coefficient(beta1, momentum_decay, step + 1)  # μ_{t+1}
        state["mu_product"].mul_(mu)  # Π_t = Π_{t−1}·μ_t, in fp32 as torch keeps it
        mu_product = state["mu_product"].item()
        denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps  # √(v / (1 − β2ᵗ)) + ε
        # θ ← θ − η(1 − μ_t)/(1 − Π_t) · g/d: the gradient's share
        theta = theta + ((-lr * (1 - mu) / (1 - mu_product)) * g) / denom
        # θ ← θ − ημ_{t+1}/(1 − Π_t·μ_{t+1}) · m/d: the momentum's share, looking one step ahead
        theta = theta + (((-lr * mu_next) / (1 - mu_product * mu_next)) * exp_avg) / denom
        param.copy_(theta)
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq)
