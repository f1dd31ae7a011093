from fusedoptim.optim.reference import coupled_gradient, upcast


def adagrad(params, grads, states, group):
    r"""Adagrad (Duchi, Hazan & Singer, "Adaptive Subgradient Methods", JMLR 2011), as torch.optim.Adagrad.
    With g ← −g if maximize and g ← g + λθ (L2):

    .. math::
        η_t = \frac{η}{1 + (t − 1)\,\mathrm{lr\_decay}}, \qquad s ← s + g^2, \qquad
        θ ← θ − η_t \frac{g}{\sqrt{s} + ε}.

    State per param: step, sum (starting at initial_accumulator_value).
    """
    lr, lr_decay, eps = float(group["lr"]), group["lr_decay"], group["eps"]
    for param, grad, state in zip(params, grads, states):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        theta, g = upcast(param), upcast(grad)
        g = coupled_gradient(g, theta, group)  # −g if maximizing, + λθ (L2)
        decayed_lr = lr / (1 + (step - 1) * lr_decay)
        state_sum = upcast(state["sum"]) + g * g  # the sum of squared gradients
        std = state_sum.sqrt() + eps  # eps after the square root
        param.copy_(theta - (decayed_lr * g) / std)  # (η_t·g)/std, torch's order: η_t·g may overflow
        state["sum"].copy_(state_sum)
