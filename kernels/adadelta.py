"""Adadelta (Zeiler 2012), in torch.optim.Adadelta's order.

Equations in ``optim.reference.adadelta``'s docstring.
"""
import triton
import triton.language as tl

from kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def adadelta_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    rho, eps = hyper.rho, hyper.eps
    grad = coupled_gradient(grad, param, hyper.weight_decay, FLAGS.MAXIMIZE)
    square_avg = rho * states[0] + (1.0 - rho) * grad * grad
    std = tl.sqrt(square_avg + eps)  # eps inside both square roots
    delta = tl.sqrt(states[1] + eps) / std * grad
    acc_delta = rho * states[1] + (1.0 - rho) * delta * delta
    return param - hyperparameter(hyper.lr) * delta, (square_avg, acc_delta)
