import torch

from fusedoptim.optim.reference import upcast


def egstepsize(params, grads, states, group):
    r"""Per-coordinate step sizes learned by exponentiated gradient (after Amid, Anil, Fifty & Warmuth,
    "Step-size Adaptation Using Exponentiated Gradient Updates", 2022, simplified):

    .. math::
        ν ← ν \odot \exp(γ\, g_{\mathrm{prev}} \odot g) \text{ (clipped to step_size_bounds if given)},
        \qquad θ ← θ − η\, ν \odot g, \qquad g_{\mathrm{prev}} ← g.

    Where successive gradients agree in sign a coordinate's step grows; where they alternate it
    shrinks. State per param: step_size (ν, starting at 1), prev_grad (starting at 0).
    """
    lr, gamma, bounds = float(group["lr"]), group["gamma"], group["step_size_bounds"]
    for param, grad, state in zip(params, grads, states):
        g = upcast(grad)
        step_size = upcast(state["step_size"]) * torch.exp(gamma * upcast(state["prev_grad"]) * g)
        if bounds is not None:
            step_size = step_size.clamp(bounds[0], bounds[1])
        theta = upcast(param) - lr * step_size * g
        # g_prev before θ is written: a gradient that shares its param's memory would read the new θ
        state["prev_grad"].copy_(g)
        state["step_size"].copy_(step_size)
        param.copy_(theta)
