"""Adadelta (Zeiler 2012), in torch.optim.Adadelta's order.

Equations in ``optim.reference.adadelta``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def adadelta_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    rho, eps = hyper.rho, hyper.eps
    grad = coupled_gradient(grad, param, hyper.weight_decay, FLAGS.MAXIMIZE)
    square_avg = rho * states[FLAGS.SQUARE_AVG_INDEX] + (1.0 - rho) * grad * grad
    std = tl.sqrt(square_avg + eps)  # eps inside both square roots
    acc_delta = states[FLAGS.ACC_DELTA_INDEX]
    delta = tl.sqrt(acc_delta + eps) / std * grad
    acc_delta = rho * acc_delta + (1.0 - rho) * delta * delta
    return param - hyperparameter(hyper.lr) * delta, (square_avg, acc_delta)
