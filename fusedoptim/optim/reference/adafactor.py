r"""Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
arXiv:1804.04235) as torch.optim.Adafactor computes it (its for-loop, ``_single_tensor_adafactor``).

For a param θ of 2+ dims, its last two n × m (a stack of them for more dims), with G = ±∇f:

.. math::
    t \leftarrow t + 1, \quad 1 - \hat\beta_{2,t} = t^{\tau} \ (\tau = \text{beta2\_decay}), \quad
    \rho_t = \min(\text{lr}, 1/\sqrt t), \quad \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
    \theta \leftarrow \theta\,(1 - \text{lr}\,\lambda) \\
    R_t = \mathrm{lerp}(R_{t-1}, \tfrac1m (G \odot G) 1_m, t^{\tau}), \quad
    C_t = \mathrm{lerp}(C_{t-1}, \tfrac1n 1_n^\top (G \odot G), t^{\tau}) \\
    \hat V_t = R_t C_t / \max(\mathrm{mean}(R_t), \epsilon_1) \qquad
    \text{(a vector or a scalar: } \hat V_t = \mathrm{lerp}(\hat V_{t-1}, G \odot G, t^{\tau})) \\
    U_t = G / \max(\sqrt{\hat V_t}, \epsilon_1), \quad
    \theta_t = \theta - \alpha_t\, U_t / \max(1, \mathrm{RMS}(U_t)/d)

R and C are kept in O(n + m) (``row_var`` [..., n, 1], ``col_var`` [..., 1, m]); a vector or a
scalar keeps ``variance`` of its shape.

Where torch's version differs from the paper: lr caps the relative step size ρ_t (the paper's
constant 0.01) and scales a decoupled weight decay (the paper has none); R and C are means, not sums
(the same V̂, better conditioned); ε₁ floors mean(R) and √V̂ instead of being added to G² (the paper's
ε₁ = 1e-30 inside the factors); ε₁ = None means the first param's dtype's machine epsilon, kept for the
rest of the group (torch's loop sets it once); there is no first moment (the paper's β₁ = 0 default).
The scalars are Python floats computed from ``step.item()`` and ``norm().item()``, as torch does.
"""
import torch


def resolved_eps1(group: dict, params: list):
    """ε₁: the group's, or for None the machine epsilon of the first param's dtype (torch's loop)."""
    eps1 = group["eps"][0]
    return torch.finfo(params[0].dtype).eps if eps1 is None and params else eps1


def scalar_lr(lr):
    """lr as torch's loop takes it: a float, or a 0-d tensor (then ρ_t, α_t and the decay factor are
    fp32 tensor arithmetic, which the twins must round alike)."""
    return lr.squeeze() if isinstance(lr, torch.Tensor) and lr.dim() != 0 else lr


def adafactor(params, grads, states, group):
    """One step over ``params`` (those with a gradient), in their own dtype as torch; ``states``: their
    state dicts, already holding ``step`` and ``row_var``/``col_var`` or ``variance``."""
    lr = scalar_lr(group["lr"])
    eps1, eps2 = resolved_eps1(group, params), group["eps"][1]
    for param, grad, state in zip(params, grads, states):
        grad = -grad if group["maximize"] else grad  # G ← −∇f when maximizing
        state["step"] += 1  # t ← t + 1
        step = state["step"].item()  # t as a Python float
        one_minus_beta2 = step ** group["beta2_decay"]  # 1 − β̂₂ₜ = t^τ
        rho = min(lr, 1 / (step ** 0.5))  # ρ_t: the relative step size, capped by lr
        alpha = max(eps2, param.norm(2).item() / (param.numel() ** 0.5)) * rho  # α_t = max(ε₂, RMS(θ))·ρ_t
        if group["weight_decay"] != 0:
            param.mul_(1 - lr * group["weight_decay"])  # θ ← θ(1 − lr·λ): decoupled decay
        if grad.dim() > 1:
            row_mean = torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1))  # (G⊙G)1_m / m
            state["row_var"].lerp_(row_mean, one_minus_beta2)  # R_t
            col_mean = torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2))  # 1_nᵀ(G⊙G) / n
            state["col_var"].lerp_(col_mean, one_minus_beta2)  # C_t
            variance = state["row_var"] @ state["col_var"]  # R_t C_t, an outer product
            variance.div_(state["row_var"].mean(dim=-2, keepdim=True).clamp_(min=eps1))  # / max(mean R_t, ε₁)
        else:
            state["variance"].lerp_(grad * grad, one_minus_beta2)  # V̂_t
            variance = state["variance"].clone()  # the state is not overwritten by what follows
        update = variance.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)  # U_t = G / max(√V̂, ε₁)
        denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * group["d"]))  # max(1, RMS(U)/d)
        param.add_(update, alpha=-alpha / denom)  # θ_t = θ − α_t·U_t / denom

