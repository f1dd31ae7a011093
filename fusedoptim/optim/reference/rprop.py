import torch

from fusedoptim.optim.reference import sign, upcast


def rprop(params, grads, states, group):
    r"""Rprop, resilient backpropagation (Riedmiller & Braun, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm", ICNN 1993), as torch.optim.Rprop, in its order.
    With g ← −g if maximize, η⁻, η⁺ = etas and Δ_min, Δ_max = step_sizes:

    .. math::
        s = \mathrm{sign}(g_t \, g_{t-1}), \qquad
        Δ_t = \mathrm{clamp}\big(Δ_{t-1} \cdot (η^+ \text{ if } s > 0,\ η^- \text{ if } s < 0,\ 1 \text{ if } s = 0),
              Δ_{\min}, Δ_{\max}\big),
        \tilde g_t = 0 \text{ if } s < 0 \text{ else } g_t, \qquad
        θ_t = θ_{t-1} - \mathrm{sign}(\tilde g_t)\, Δ_t, \qquad g_{t-1} ← \tilde g_t.

    Δ starts at lr at the param's first step (lr later changed does not reach it, as in torch) and
    g_{t−1} at 0, so the first factor is 1. Where the sign flipped the stored gradient is 0 (the
    paper's Rprop without weight-backtracking, torch's): θ holds still there, and the next factor is 1.
    Only signs and step sizes reach θ: the gradient's magnitude never does. sign(NaN) is NaN (torch's
    on CUDA; on the CPU torch.sign(NaN) is 0), so a NaN gradient makes θ and Δ NaN there.
    All math in fp32 (fp64 for fp64 params): torch multiplies a bf16 or fp16 Δ by η rounded to the
    param's dtype (1.2 as 1.203125 in bf16).
    State per param: step (fp32 scalar tensor), prev (g_{t−1}), step_size (Δ).
    """
    etaminus, etaplus = map(float, group["etas"])
    step_size_min, step_size_max = map(float, group["step_sizes"])
    for param, grad, state in zip(params, grads, states):
        theta, g = upcast(param), upcast(grad)  # all math in fp32, whatever the storage dtype
        if group["maximize"]:
            g = -g
        agreement = sign(g * upcast(state["prev"]))  # s = sign(g_t·g_{t−1}), NaN kept
        # η⁺ where the sign held, η⁻ where it flipped, 1 where either gradient is 0 (NaN stays NaN)
        factor = torch.where(agreement > 0, etaplus,
                             torch.where(agreement < 0, etaminus, torch.where(agreement == 0, 1.0, agreement)))
        step_size = (upcast(state["step_size"]) * factor).clamp(step_size_min, step_size_max)  # Δ ← clamp(Δ·factor)
        g = torch.where(agreement < 0, 0.0, g)  # g̃ = 0 where the sign flipped (torch: where factor = η⁻)
        theta = theta - sign(g) * step_size  # θ ← θ − sign(g̃)·Δ (torch's addcmul_ with value −1)
        # g_{t−1} before θ is written: a gradient that shares its param's memory would read the new θ
        state["prev"].copy_(g)
        state["step_size"].copy_(step_size)
        param.copy_(theta)
