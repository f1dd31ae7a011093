"""Adadelta (Zeiler 2012), in torch.optim.Adadelta's order.

Equations in ``optim.reference.adadelta``'s docstring.
"""
import triton
import triton.language as tl

from kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def adadelta_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    MAXIMIZE: tl.constexpr = FLAGS[0]
    lr, rho, eps, weight_decay = hyper
    lr = hyperparameter(lr)
    grad = coupled_gradient(grad, param, weight_decay, MAXIMIZE)
    square_avg = rho * states[0] + (1.0 - rho) * grad * grad
    std = tl.sqrt(square_avg + eps)  # eps inside both square roots
    delta = tl.sqrt(states[1] + eps) / std * grad
    acc_delta = rho * states[1] + (1.0 - rho) * delta * delta
    return param - lr * delta, (square_avg, acc_delta)


def adadelta_arguments(group):
    hyper = (group["lr"], float(group["rho"]), float(group["eps"]), float(group["weight_decay"]))
    return hyper, (bool(group["maximize"]),)
