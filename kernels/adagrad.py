"""Adagrad (Duchi, Hazan & Singer 2011), in torch.optim.Adagrad's order.

Equations in ``optim.reference.adagrad``'s docstring.
"""
import triton
import triton.language as tl

from kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def adagrad_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    MAXIMIZE: tl.constexpr = FLAGS[0]
    lr, lr_decay, weight_decay, eps = hyper
    lr = hyperparameter(lr)
    step = scalars[0]
    grad = coupled_gradient(grad, param, weight_decay, MAXIMIZE)
    decayed_lr = lr / (1.0 + (step - 1.0) * lr_decay)
    state_sum = states[0] + grad * grad
    std = tl.sqrt(state_sum) + eps  # eps after the square root
    return param - decayed_lr * (grad / std), (state_sum,)


def adagrad_arguments(group):
    hyper = (group["lr"], float(group["lr_decay"]), float(group["weight_decay"]), float(group["eps"]))
    return hyper, (bool(group["maximize"]),)
