from fusedoptim.optim.reference import coupled_gradient, upcast


def adadelta(params, grads, states, group):
    r"""Adadelta (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012), as torch.optim.Adadelta.
    With g ← −g if maximize and g ← g + λθ (L2):

    .. math::
        v ← ρ v + (1 − ρ) g^2, \qquad Δ = \frac{\sqrt{u + ε}}{\sqrt{v + ε}}\, g, \qquad
        u ← ρ u + (1 − ρ) Δ^2, \qquad θ ← θ − η Δ.

    State per param: step, square_avg (v), acc_delta (u).
    """
    lr, rho, eps = float(group["lr"]), group["rho"], group["eps"]
    for param, grad, state in zip(params, grads, states):
        theta, g = upcast(param), upcast(grad)
        g = coupled_gradient(g, theta, group)  # −g if maximizing, + λθ (L2)
        square_avg = rho * upcast(state["square_avg"]) + (1 - rho) * g * g
        std = (square_avg + eps).sqrt()  # eps inside both square roots
        delta = (upcast(state["acc_delta"]) + eps).sqrt() / std * g
        acc_delta = rho * upcast(state["acc_delta"]) + (1 - rho) * delta * delta
        param.copy_(theta - lr * delta)
        state["square_avg"].copy_(square_avg)
        state["acc_delta"].copy_(acc_delta)
