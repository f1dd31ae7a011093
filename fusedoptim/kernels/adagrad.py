"""Adagrad (Duchi, Hazan & Singer 2011), in torch.optim.Adagrad's order.

Equations in ``optim.reference.adagrad``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def adagrad_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    step = scalars[0]
    grad = coupled_gradient(grad, param, hyper.weight_decay, FLAGS.MAXIMIZE)
    decayed_lr = hyperparameter(hyper.lr) / (1.0 + (step - 1.0) * hyper.lr_decay)
    state_sum = states[FLAGS.SUM_INDEX] + grad * grad
    std = tl.sqrt(state_sum) + hyper.eps  # eps after the square root
    # (η_t·g)/std, torch's order (addcdiv): where η_t·g overflows, torch's θ is ±inf or NaN, not finite
    return param - (decayed_lr * grad) / std, (state_sum,)
