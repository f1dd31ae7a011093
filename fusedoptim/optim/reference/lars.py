import torch

from fusedoptim.optim.reference import upcast


def lars(params, grads, states, group):
    r"""LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg, "Large Batch Training of
    Convolutional Networks", 2017, arXiv:1708.03888), as pytorch_optimizer.LARS (4.1.0). With g ← −g if
    maximize, λ = weight_decay, k = trust_coefficient, μ = momentum, τ = dampening, on a tensor of two or
    more dimensions:

    .. math::
        s = \frac{k ‖θ‖}{‖g‖ + λ‖θ‖} \text{ (1 where } ‖θ‖ = 0 \text{ or the denominator is 0)}, \qquad
        g ← s (g + λθ),

    ‖θ‖ and ‖g‖ over the whole tensor, before the step; a tensor of one dimension or none keeps g (no
    trust ratio, no weight decay). Then, for every tensor, with the buffer starting at zero:

    .. math::
        b ← μ b + (1 − τ) g, \qquad d = g + μ b \text{ (Nesterov) else } b, \qquad θ ← θ − η d.

    Without momentum d = g. State per param: momentum_buffer (only when momentum > 0).
    """
    lr, momentum, weight_decay = float(group["lr"]), group["momentum"], group["weight_decay"]
    for param, grad, state in zip(params, grads, states):
        theta, g = upcast(param), upcast(grad)
        g = -g if group["maximize"] else g
        if takes_trust(param):
            theta_norm, grad_norm = torch.linalg.vector_norm(theta), torch.linalg.vector_norm(g)
            denominator = grad_norm + weight_decay * theta_norm
            # s = k‖θ‖/(‖g‖ + λ‖θ‖), or 1
            trust = group["trust_coefficient"] * theta_norm / denominator if theta_norm > 0 and denominator > 0 else 1.0
            g = (g + weight_decay * theta) * trust  # g ← s·(g + λθ)
        if momentum > 0:
            buffer = momentum * upcast(state["momentum_buffer"]) + (1 - group["dampening"]) * g  # b ← μb + (1 − τ)g
            g = g + momentum * buffer if group["nesterov"] else buffer
            state["momentum_buffer"].copy_(buffer)
        param.copy_(theta - lr * g)  # θ ← θ − η·d


def takes_trust(param) -> bool:
    """Whether a tensor takes the trust ratio and weight decay: two or more dimensions (not a bias or a
    normalization weight)."""
    return param.dim() > 1


def lars_constants(group, param, numel) -> tuple:
    """The kernel's per-tensor constant: 1.0 where the tensor takes the trust ratio, else 0.0."""
    return (1.0 if takes_trust(param) else 0.0,)
