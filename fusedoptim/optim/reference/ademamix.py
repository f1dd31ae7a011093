import math

import torch

from fusedoptim.optim.reference import cautious, upcast

# The authors' f(β) = ln ½ / ln(β + 1e-8) − 1 (apple/ml-ademamix, pytorch/ademamix.py): the 1e-8 keeps
# ln β finite for β1 = 0, where their fast EMA is the gradient itself.
HALF_LIFE_EPS = 1e-8


def half_life(beta: float) -> float:
    """f(β) = ln ½ / ln(β + 1e-8) − 1: the steps after which an EMA of decay β has halved a term, less one."""
    return math.log(0.5) / math.log(beta + HALF_LIFE_EPS) - 1


def alpha_and_slow_weight(group, step) -> tuple:
    """α_t and 1 − β3_t after ``step`` steps (an fp32 tensor of step counts: one param's, or a device's
    buffer of them), as fp64 tensors shaped like ``step``; fp64 as the authors' Python floats, so that
    1 − β3_t ≈ 1e-4 keeps its digits (ν's and θ's later fp32 math reads it rounded once).

    α_t = α·t/T_α while t < T_α, then α (linear from 0). β3_t = 0.5^(1/(f_t + 1)) with
    f_t = (1 − a)·f(β1) + a·f(β3), a = t/T_β3, while t < T_β3, then β3: the half-life grows linearly
    from β1's to β3's. 1 − β3_t = −expm1(ln ½ / (f_t + 1)), which keeps its digits where β3_t ≈ 1."""
    step = step.double()
    alpha, alpha_warmup, beta3_warmup = group["alpha"], group["alpha_warmup"], group["beta3_warmup"]
    beta1, _, beta3 = map(float, group["betas"])
    alpha_t = torch.full_like(step, alpha)
    if alpha_warmup is not None:
        alpha_t = torch.where(step < alpha_warmup, step / alpha_warmup * alpha, alpha_t)
    slow_weight = torch.full_like(step, 1 - beta3)
    if beta3_warmup is not None:
        fraction = step / beta3_warmup
        half_life_t = (1 - fraction) * half_life(beta1) + fraction * half_life(beta3)
        slow_weight = torch.where(step < beta3_warmup, -torch.expm1(math.log(0.5) / (half_life_t + 1)), slow_weight)
    return alpha_t, slow_weight


def advance_alpha_and_slow_weight(group, step, alpha_t, one_minus_beta3_t) -> tuple:
    """α_t and 1 − β3_t from a device's packed steps, before the update (``Rule.scalar_updates``); the
    group's values read each step, as the authors' code reads them."""
    return alpha_and_slow_weight(group, step)


def ademamix(params, grads, states, group):
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", 2024),
    as the authors' PyTorch reference (apple/ml-ademamix, pytorch/ademamix.py). With α_t and β3_t warmed
    up over alpha_warmup and beta3_warmup steps (``alpha_and_slow_weight``) and λ = weight_decay:

    .. math::
        m_1 ← β_1 m_1 + (1-β_1) g, \qquad m_2 ← β_{3,t} m_2 + (1-β_{3,t}) g, \qquad ν ← β_2 ν + (1-β_2) g^2,
        u = \frac{m_1/(1-β_1^t) + α_t m_2}{\sqrt{ν}/\sqrt{1-β_2^t} + ε}, \qquad θ ← θ - η (u + λθ).

    The decay is AdamW's, λθ of the θ before the step, computed as θ(1 − ηλ) − η·u (pytorch-optimizer's
    AdEMAMix with weight_decouple=True): equal to rounding, but where θ is infinite the authors' form is
    NaN (inf − inf) and this one stays infinite. With cautious, m1 alone is masked by its agreement with g
    (``reference.cautious``), as pytorch-optimizer's cautious AdEMAMix: α_t·m2 and the decay never. State per param: step, alpha_t and
    one_minus_beta3_t (fp32 scalars, the latter 1 − β3_t), exp_avg_fast (m1), exp_avg_slow (m2),
    exp_avg_sq (ν), the authors' names.
    """
    lr, (beta1, beta2, _), eps = float(group["lr"]), map(float, group["betas"]), group["eps"]
    weight_decay = group["weight_decay"]
    for param, grad, state in zip(params, grads, states):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        alpha_t, slow_weight = alpha_and_slow_weight(group, state["step"])
        state["alpha_t"].copy_(alpha_t)
        state["one_minus_beta3_t"].copy_(slow_weight)
        alpha_t, slow_weight = state["alpha_t"].item(), state["one_minus_beta3_t"].item()  # as the kernel reads them
        theta, g = upcast(param), upcast(grad)  # all math in fp32, whatever the storage dtype
        exp_avg_fast = upcast(state["exp_avg_fast"]).lerp(g, 1 - beta1)  # m1 ← β1·m1 + (1 − β1)·g
        exp_avg_slow = upcast(state["exp_avg_slow"]).lerp(g, slow_weight)  # m2 ← β3_t·m2 + (1 − β3_t)·g
        exp_avg_sq = upcast(state["exp_avg_sq"]) * beta2 + (1 - beta2) * g * g  # ν ← β2·ν + (1 − β2)·g²
        denom = exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step) + eps  # √ν̂ + ε
        fast = cautious(exp_avg_fast, g, group)  # m1 masked where it disagrees with g, with caution
        update = (fast / (1 - beta1**step) + alpha_t * exp_avg_slow) / denom  # (m̂1 + α_t·m2)/(√ν̂ + ε)
        # θ ← θ − η·(u + λθ), AdamW's decay of the θ before the step, as θ(1 − ηλ) − η·u (an infinite θ stays so)
        param.copy_(theta * (1 - lr * weight_decay) - lr * update)
        state["exp_avg_fast"].copy_(exp_avg_fast)
        state["exp_avg_slow"].copy_(exp_avg_slow)
        state["exp_avg_sq"].copy_(exp_avg_sq)
