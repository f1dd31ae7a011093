r"""Muon, the oracle: torch.optim.Muon's step in plain PyTorch, its operations in its order.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks",
https://kellerjordan.github.io/posts/muon/) orthogonalizes the momentum of a matrix param. With μ
the momentum, γ the lr, λ the weight decay, (a, b, c) the Newton–Schulz coefficients, k the steps:

    B_t = μ·B_{t−1} + (1 − μ)·g_t                      (torch: buf.lerp_(g, 1 − μ))
    U_t = (1 − μ)·g_t + μ·B_t  if nesterov, else B_t   (torch: g.lerp(buf, μ))
    O_t = NS_k(U_t): X_0 = U/max(‖U‖_F, ε) in bf16 (Uᵀ if U has more rows than columns), then k times
          A = X·Xᵀ,  B = b·A + c·A·A,  X ← a·X + B·X   (each product bf16, fp32-accumulated)
    θ_t = (1 − γλ)·θ_{t−1} − γ'·O_t

where γ' = γ·√max(1, rows/cols) for adjust_lr_fn None or "original" (Jordan's), and
γ' = 0.2·γ·√max(rows, cols) for "match_rms_adamw" (Liu et al. 2025, "Muon is scalable for LLM
training", arXiv:2502.16982: the update's RMS matched to AdamW's, so AdamW's lr and λ carry over).
The quintic's coefficients maximise its slope at zero: X converges to U·S'·Vᵀ with S' near 1, not
exactly to the polar factor U·Vᵀ of U = U·S·Vᵀ.

torch does Newton–Schulz in bf16 whatever the param's dtype, so does this oracle; the momentum and
the param update are in the param's dtype (torch's ops on the param's tensors). The state is torch's:
``momentum_buffer``, the gradient's twin, zero before the first step.
"""
import math

import torch


def adjusted_lr(lr: float, adjust_lr_fn, shape) -> float:
    """γ' for a param of ``shape``: the lr scaled so that updates of any aspect ratio have a like RMS."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))  # Jordan's: tall matrices' updates scaled up
    return lr * 0.2 * math.sqrt(max(rows, cols))  # "match_rms_adamw": Liu et al.'s 0.2·√max(A, B)


def newton_schulz(update: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """NS_k(U) of one matrix, in bf16, as torch's _zeropower_via_newtonschulz."""
    a, b, c = coefficients
    x = update.bfloat16()  # Newton–Schulz runs in bf16
    if update.size(0) > update.size(1):
        x = x.T  # iterate on the wide orientation: A = X·Xᵀ is then the smaller Gram matrix
    x.div_(x.norm().clamp(min=eps))  # ‖X‖_F ≤ 1 bounds the spectral norm by 1
    for _ in range(steps):
        gram = x @ x.T  # A = X·Xᵀ
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # B = b·A + c·A·A
        x = torch.addmm(x, polynomial, x, beta=a)  # X ← a·X + B·X
    if update.size(0) > update.size(1):
        x = x.T  # back to the param's orientation
    return x


def muon(params, grads, states, group):
    """One Muon step over the params that have a gradient (each 2-D), in place."""
    lr = float(group["lr"])  # torch's _to_scalar: a tensor lr is read on the host
    momentum, weight_decay = group["momentum"], group["weight_decay"]
    for param, grad, state in zip(params, grads, states):
        buffer = state["momentum_buffer"]
        buffer.lerp_(grad, 1 - momentum)  # B ← μB + (1 − μ)g
        update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer  # Nesterov: (1 − μ)g + μB
        update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])  # O = NS_k(U)
        param.mul_(1 - lr * weight_decay)  # θ ← (1 − γλ)θ, decoupled weight decay
        param.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], param.shape))  # θ ← θ − γ'·O
