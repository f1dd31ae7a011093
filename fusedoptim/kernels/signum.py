"""Signum, the sign of momentum (Bernstein et al. 2018), with decoupled weight decay; with caution
(Liang et al. 2024) the reduce that counts where its step agrees with the gradient.

Equations in ``optim.reference.signum``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import agreement, cautious, decoupled_decay, hyperparameter, sign


@triton.jit
def signum_step(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """(θ decayed, η·sign(m): the step caution masks, m's new value)."""
    lr, momentum = hyperparameter(hyper.lr), hyper.momentum
    exp_avg = momentum * states[FLAGS.EXP_AVG_INDEX] + (1.0 - momentum) * grad
    return decoupled_decay(param, lr, hyper.weight_decay), lr * sign(exp_avg), exp_avg


@triton.jit
def signum_agreement(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, step, exp_avg = signum_step(param, grad, states, scalars, hyper, FLAGS)
    return (agreement(step, grad),)


@triton.jit
def signum_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, step, exp_avg = signum_step(param, grad, states, scalars, hyper, FLAGS)
    return param - cautious(step, grad, scalars, 0, FLAGS), (exp_avg,)
