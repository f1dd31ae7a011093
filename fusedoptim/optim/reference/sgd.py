from fusedoptim.optim.reference import cautious, coupled_gradient, upcast


def sgd(params, grads, states, group, first_step):
    r"""Stochastic gradient descent with momentum (Polyak 1964; Nesterov 1983; Sutskever et al. 2013),
    as torch.optim.SGD. With g ← −g if maximize, g ← g + λθ (L2), μ = momentum, τ = dampening:

    .. math::
        b_1 = g_1, \qquad b_t = μ b_{t-1} + (1 − τ) g_t, \qquad
        d_t = g_t + μ b_t \text{ (Nesterov) else } b_t, \qquad θ ← θ − η d_t.

    Without momentum d_t = g_t. With cautious (momentum > 0), the step η·d_t is masked by its agreement
    with g_t (``reference.cautious``). State per param: momentum_buffer (only when momentum ≠ 0), allocated
    by the optimizer; ``first_step[i]`` says it has not been written yet.
    """
    lr, momentum, dampening = float(group["lr"]), group["momentum"], group["dampening"]
    for param, grad, state, first in zip(params, grads, states, first_step):
        theta, g = upcast(param), upcast(grad)
        g = coupled_gradient(g, theta, group)  # −g if maximizing, + λθ (L2)
        if momentum != 0:
            if first:  # the first buffer is the gradient, undampened
                buffer = g
            else:
                buffer = momentum * upcast(state["momentum_buffer"]) + (1 - dampening) * g
            direction = g + momentum * buffer if group["nesterov"] else buffer
            state["momentum_buffer"].copy_(buffer)
        else:
            direction = g
        param.copy_(theta - cautious(lr * direction, g, group))  # masked where it disagrees with g, with caution
