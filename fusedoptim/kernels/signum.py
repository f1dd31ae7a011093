"""Signum, the sign of momentum (Bernstein et al. 2018), with decoupled weight decay.

Equations in ``optim.reference.signum``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import decoupled_decay, hyperparameter, sign


@triton.jit
def signum_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, momentum = hyperparameter(hyper.lr), hyper.momentum
    exp_avg = momentum * states[FLAGS.EXP_AVG_INDEX] + (1.0 - momentum) * grad
    return decoupled_decay(param, lr, hyper.weight_decay) - lr * sign(exp_avg), (exp_avg,)
