import torch

from fusedoptim.optim.reference import coupled_gradient, upcast


def rmsprop(params, grads, states, group):
    r"""RMSprop (Hinton, Coursera lecture 6e, 2012; centered: Graves, "Generating Sequences with
    Recurrent Neural Networks", 2013), as torch.optim.RMSprop. With g ← −g if maximize, g ← g + λθ:

    .. math::
        v ← α v + (1 − α) g^2, \qquad \bar g ← \bar g + (1 − α)(g − \bar g) \text{ (centered)},
        \qquad a = \sqrt{v − \bar g^2} + ε \text{ (centered) else } \sqrt{v} + ε,
        b ← μ b + g / a, \ θ ← θ − η b \text{ (momentum > 0) else } θ ← θ − η\, g / a.

    State per param: step, square_avg, momentum_buffer (momentum > 0), grad_avg (centered).
    """
    lr, alpha, eps, momentum = float(group["lr"]), group["alpha"], group["eps"], group["momentum"]
    for param, grad, state in zip(params, grads, states):
        theta, g = upcast(param), upcast(grad)
        g = coupled_gradient(g, theta, group)  # −g if maximizing, + λθ (L2)
        square_avg = alpha * upcast(state["square_avg"]) + (1 - alpha) * g * g
        state["square_avg"].copy_(square_avg)
        if group["centered"]:  # subtract the squared running mean of g
            grad_avg = upcast(state["grad_avg"]).lerp(g, 1 - alpha)
            state["grad_avg"].copy_(grad_avg)
            # v − ḡ² rounded once, torch's fused multiply-add: ḡ² alone may overflow where v − ḡ² does not
            avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1).sqrt() + eps
        else:
            avg = square_avg.sqrt() + eps  # eps after the square root
        if momentum > 0:
            buffer = momentum * upcast(state["momentum_buffer"]) + g / avg
            state["momentum_buffer"].copy_(buffer)
            param.copy_(theta - lr * buffer)
        else:
            param.copy_(theta - (lr * g) / avg)  # torch's order: η·g may overflow where g/avg does not
