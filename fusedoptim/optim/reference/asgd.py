import torch

from fusedoptim.optim.reference import coupled_gradient, upcast


def step_size_and_averaging_weight(lr, lambd: float, alpha: float, t0: float, step: torch.Tensor) -> tuple:
    """η and μ after ``step`` steps, as fp64 tensors shaped like ``step`` (fp64 step counts: one
    param's, or a device's buffer of them; lr a number or an fp64 tensor). In fp64, as torch computes
    them in Python floats; copied into the fp32 states, they round as torch stores them:
    η = lr / (1 + λ·lr·t)^α,  μ = 1 / max(1, t − t0)."""
    eta = lr / ((1 + lambd * lr * step) ** alpha)
    mu = 1 / (step - t0).clamp(min=1)
    return eta, mu


def advance_eta_and_mu(group, step, eta, mu) -> tuple:
    """η and μ from a device's packed steps, after the update, which read them as the previous step left
    them (``Rule.scalar_updates``); in fp64 on the device, a tensor lr read there (no host sync). The
    group's values read each step: a scheduler may change them."""
    lr = group["lr"]
    lr = lr.to(step.device, torch.float64) if isinstance(lr, torch.Tensor) else lr
    return step_size_and_averaging_weight(lr, group["lambd"], group["alpha"], group["t0"], step.double())


def asgd(params, grads, states, group):
    r"""Averaged SGD (Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging",
    SIAM J. Control Optim. 1992), with the decaying step size of Xu ("Towards Optimal One Pass Large
    Scale Learning with Averaged Stochastic Gradient Descent", 2011), as torch.optim.ASGD. With
    g ← −g if maximize and g ← g + wθ (L2, w = weight_decay), λ = lambd, and η_{t−1}, μ_{t−1} the
    values the previous step left (η_0 = lr, μ_0 = 1):

    .. math::
        θ_t = θ_{t-1} (1 - λ η_{t-1}) - η_{t-1} g_t,
        \qquad \bar θ_t = \bar θ_{t-1} + μ_{t-1} (θ_t - \bar θ_{t-1}) \ (\bar θ_t = θ_t \text{ where } μ_{t-1} = 1),
        η_t = \frac{lr}{(1 + λ\, lr\, t)^{α}}, \qquad μ_t = \frac{1}{\max(1, t - t_0)}.

    θ̄ (ax) is the running average of the iterates: μ = 1 copies θ into it until step t0 + 1, then
    μ_t = 1/(t − t0) averages the iterates from there on.

    State per param: step, eta (η) and mu (μ), fp32 scalar tensors as torch keeps them, and ax (θ̄).
    The step reads η and μ as the previous step left them, then advances them from its own count.
    """
    lr, lambd, alpha, t0 = float(group["lr"]), group["lambd"], group["alpha"], group["t0"]
    for param, grad, state in zip(params, grads, states):
        theta, g, ax = upcast(param), upcast(grad), upcast(state["ax"])  # all math in fp32 (fp64 for fp64)
        g = coupled_gradient(g, theta, group)  # −g if maximizing, + wθ (L2)
        eta, mu = state["eta"].item(), state["mu"].item()  # η_{t−1}, μ_{t−1}: those of the previous step
        theta = theta * (1 - lambd * eta)  # θ ← θ·(1 − λη): the factor in Python floats, as torch's
        theta = theta.add(g, alpha=-eta)  # θ ← θ − η·g
        # θ̄ ← θ̄ + μ·(θ − θ̄); with μ = 1 a copy, as torch's (θ̄ + (θ − θ̄) may round off θ)
        ax = ax + (theta - ax) * mu if mu != 1 else theta
        eta, mu = step_size_and_averaging_weight(lr, lambd, alpha, t0, state["step"].double())  # η_t, μ_t
        param.copy_(theta)
        state["ax"].copy_(ax)
        state["eta"].copy_(eta)
        state["mu"].copy_(mu)
