"""Per-coordinate step sizes learned by exponentiated gradient (a simplified Amid et al. 2022).

Equations in ``optim.reference.egstepsize``'s docstring.
"""
import triton
import triton.language as tl

from kernels.elementwise import hyperparameter


@triton.jit
def egstepsize_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    HAS_BOUNDS: tl.constexpr = FLAGS[0]
    lr, gamma, low, high = hyper
    lr = hyperparameter(lr)
    step_size, prev_grad = states
    step_size = step_size * tl.exp(gamma * prev_grad * grad)  # grows where successive gradients agree
    if HAS_BOUNDS:
        step_size = tl.minimum(tl.maximum(step_size, low), high)
    return param - lr * step_size * grad, (step_size, grad)


def egstepsize_arguments(group):
    bounds = group["step_size_bounds"]
    low, high = (float(bounds[0]), float(bounds[1])) if bounds is not None else (0.0, 0.0)
    return (group["lr"], float(group["gamma"]), low, high), (bounds is not None,)
