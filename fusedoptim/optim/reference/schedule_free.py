r"""Schedule-Free AdamW and SGD (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
Scheduled", NeurIPS 2024), as the authors' package ``schedulefree`` 1.4.1 (AdamWScheduleFree,
SGDScheduleFree). The params hold y, where the gradient is taken, while training; z is the base
sequence and x, the average of the z's that evaluation should use, is y moved away from z:

.. math::
    y = (1-β) z + β x, \qquad x = y + (1 - 1/β)(z - y) \ (\text{eval}), \qquad y = x + (1-β)(z - x) \ (\text{train}).

At step t (k = t − 1 steps taken), with warm-up W, r and p = weight_lr_power, β = β1 (AdamW) or the
momentum (SGD):

.. math::
    γ_t = lr \cdot \min(t / W, 1), \quad γ_{max} = \max(γ_{max}, γ_t) \ (\text{from } -1),
    \quad w_t = t^r γ_{max}^p, \quad W_t = W_{t-1} + w_t, \quad c_t = w_t / W_t \ (0 \text{ where } W_t = 0),
    v_t = β_2 v_{t-1} + (1-β_2) g_t^2, \quad \hat g = g_t / (\sqrt{v_t / (1-β_2^t)} + ε) + λ y \ \text{(AdamW)},
    \quad \hat g = g_t + λ y \ \text{(SGD)},
    y ← y + c_t (z - y) + γ_t (β(1 - c_t) - 1) \hat g, \qquad z ← z - γ_t \hat g,

z made from y at a param's first step. The package keeps k, γ_max and W_t per group; here they are per
param (step, lr_max, weight_sum: a param's own count, as torch's step), with c_t (ckp1) beside them, all
advanced by ``advance_schedule_free``: the same for every param that steps each time.
"""
import torch

from fusedoptim.optim.reference import upcast


def averaging_coefficient(group) -> float:
    """β, the interpolation between x and z that y is: AdamW's β1, SGD's momentum."""
    return group["betas"][0] if "betas" in group else group["momentum"]


def advance_schedule_free(group, step, lr_max, weight_sum, ckp1) -> tuple:
    """γ_max, W_t and c_t = w_t/W_t after ``step`` steps (packed fp32 tensors of one device, or one
    param's), before the update, in fp64 as the package computes them in Python floats; a tensor lr read
    on the device (no host sync). Read each step: a scheduler may change lr."""
    lr = group["lr"]
    lr = lr.to(step.device, torch.float64) if isinstance(lr, torch.Tensor) else lr
    step = step.double()
    warmup = group["warmup_steps"]
    # k < W: (k + 1)/W, with t = k + 1 already counted; then 1
    scheduled_lr = lr * (step / warmup).clamp(max=1.0) if warmup > 0 else lr
    lr_max = lr_max.double().clamp(min=scheduled_lr)  # γ_max = max(γ_max, γ_t)
    weight = step ** group["r"] * lr_max ** group["weight_lr_power"]  # w_t = t^r · γ_max^p
    weight_sum = weight_sum.double() + weight
    # 0 ≤ w_t ≤ W_t, so W_t = 0 only where w_t = 0: c = 0 there (the package's ZeroDivisionError, lr = 0
    # throughout), and a floor on W_t changes no other quotient
    ckp1 = weight / weight_sum.clamp(min=torch.finfo(torch.float64).tiny)
    return lr_max, weight_sum, ckp1


def _advance(state, group) -> tuple:
    """One param's scalar states advanced in place; its (t, γ_t, c_t) as Python floats."""
    names = ("lr_max", "weight_sum", "ckp1")
    for name, value in zip(names, advance_schedule_free(group, state["step"], *(state[n] for n in names))):
        state[name].copy_(value)
    step, warmup = state["step"].item(), group["warmup_steps"]
    scheduled_lr = float(group["lr"]) * (step / warmup if step - 1 < warmup else 1.0)
    return step, scheduled_lr, state["ckp1"].item()


def _interpolate(y, z, ckp1, scheduled_lr, beta, normalized):
    """y ← lerp(y, z, c) + γ(β(1 − c) − 1)·ĝ and z ← z − γ·ĝ, as the package's foreach ops."""
    y = torch.lerp(y, z, ckp1)  # y ← y + c·(z − y), torch's lerp as the package's
    y = y + normalized * (scheduled_lr * (beta * (1 - ckp1) - 1))
    z = z - normalized * scheduled_lr
    return y, z


def schedule_free_adamw(params, grads, states, group, first_step):
    """Schedule-Free AdamW: the module docstring's equations. States: step, lr_max, weight_sum, ckp1
    (fp32 scalars), z and exp_avg_sq; ``first_step[i]``: z not written yet (it starts as y)."""
    beta1, beta2 = map(float, group["betas"])
    eps, decay = group["eps"], group["weight_decay"]
    for param, grad, state, first in zip(params, grads, states, first_step):
        step, scheduled_lr, ckp1 = _advance(state, group)
        y, g = upcast(param), upcast(grad)  # all math in fp32 (fp64 for fp64 params)
        z = y if first else upcast(state["z"])  # z made from y at the first step
        exp_avg_sq = upcast(state["exp_avg_sq"]) * beta2 + (1 - beta2) * g * g  # v ← β2·v + (1 − β2)·g²
        denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps  # √(v / (1 − β2ᵗ)) + ε
        normalized = g / denom
        if decay != 0:
            normalized = normalized + decay * y  # ĝ + λ·y, at y before it moves
        y, z = _interpolate(y, z, ckp1, scheduled_lr, beta1, normalized)
        param.copy_(y)
        state["z"].copy_(z)
        state["exp_avg_sq"].copy_(exp_avg_sq)


def schedule_free_sgd(params, grads, states, group, first_step):
    """Schedule-Free SGD: the module docstring's equations with ĝ = g + λy. States: step, lr_max,
    weight_sum, ckp1 (fp32 scalars) and z; ``first_step[i]``: z not written yet (it starts as y)."""
    momentum, decay = group["momentum"], group["weight_decay"]
    for param, grad, state, first in zip(params, grads, states, first_step):
        _, scheduled_lr, ckp1 = _advance(state, group)
        y, g = upcast(param), upcast(grad)  # all math in fp32 (fp64 for fp64 params)
        z = y if first else upcast(state["z"])  # z made from y at the first step
        normalized = g + decay * y if decay != 0 else g  # ĝ = g + λ·y
        y, z = _interpolate(y, z, ckp1, scheduled_lr, momentum, normalized)
        param.copy_(y)
        state["z"].copy_(z)


def to_eval(params, states, group):
    """The params from y to x: x = y + (1 − 1/β)·(z − y), the package's p.lerp_(z, 1 − 1/β)."""
    beta = averaging_coefficient(group)
    for param, state in zip(params, states):
        param.lerp_(state["z"], 1 - 1 / beta)


def to_train(params, states, group):
    """The params from x back to y: y = x + (1 − β)·(z − x), the package's p.lerp_(z, 1 − β)."""
    beta = averaging_coefficient(group)
    for param, state in zip(params, states):
        param.lerp_(state["z"], 1 - beta)
