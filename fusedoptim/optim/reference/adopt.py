import math

from fusedoptim.optim.reference import cautious, upcast


def adopt(params, grads, states, group, first_step):
    r"""ADOPT (Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate",
    NeurIPS 2024), as pytorch-optimizer 4.1.0's ADOPT (its clip_lambda at its default, t^¼). With
    g ← −g if maximize, then weight decay λ: g ← g + λθ, or with weight_decouple θ ← θ(1 − ηλ)
    (θ ← θ(1 − λ) with fixed_decay), on every step including the first:

    .. math::
        t = 1: \quad v_1 = g_1^2 \text{ (θ and m stay)};
        t > 1: \quad m_t = β_1 m_{t-1} + (1-β_1)\,\mathrm{clip}\big(g_t / \max(\sqrt{v_{t-1}}, ε),\ ±t^{1/4}\big),
        \quad θ_t = θ_{t-1} - η\, m_t, \quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2.

    t counts this step, 1 on the first, so the first update clips at ±2^¼. The authors' repository
    (iShohei220/adopt) now counts from 0: its first update clips at ±1 (t − 1 in place of t), and its
    first call applies no decoupled decay (docs/ademamix-adopt.md). With cautious, the step η·m_t is masked
    by its agreement with the clipped normalized gradient ĝ, not g (``reference.cautious``), as
    pytorch-optimizer's cautious ADOPT: ĝ has g's sign but where g/max(√v, ε) rounds to 0. State per param: step, exp_avg (m),
    exp_avg_sq (v, made by the first step: ``first_step[i]``).
    """
    lr, (beta1, beta2), eps, weight_decay = float(group["lr"]), map(float, group["betas"]), group["eps"], \
        group["weight_decay"]
    for param, grad, state, first in zip(params, grads, states, first_step):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        theta, g = upcast(param), upcast(grad)  # all math in fp32, whatever the storage dtype
        if group["maximize"]:
            g = -g
        if weight_decay != 0:  # skipped at 0, as the peer does (0·θ of an infinite θ is NaN)
            if group["weight_decouple"]:  # θ ← θ(1 − ηλ), or θ(1 − λ) with fixed_decay
                theta = theta * (1 - weight_decay * (1.0 if group["fixed_decay"] else lr))
            else:
                g = g + weight_decay * theta  # L2 added to the gradient
        if first:  # v_1 = g²: the first step only measures the gradient's scale
            param.copy_(theta)
            state["exp_avg_sq"].copy_(g * g)
            continue
        exp_avg_sq = upcast(state["exp_avg_sq"])  # v_{t−1}: the normalization reads the steps before this one
        clip = math.pow(step, 0.25)  # ±t^¼
        normed = (g / exp_avg_sq.sqrt().clamp(min=eps)).clamp(-clip, clip)  # clip(g / max(√v, ε), ±t^¼)
        exp_avg = upcast(state["exp_avg"]).lerp(normed, 1 - beta1)  # m ← β1·m + (1 − β1)·ĝ
        param.copy_(theta - cautious(lr * exp_avg, normed, group))  # θ ← θ − η·m, masked against ĝ with caution
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq * beta2 + (1 - beta2) * g * g)  # v ← β2·v + (1 − β2)·g²
