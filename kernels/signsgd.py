"""SignSGD (Bernstein et al. 2018) with decoupled weight decay.

Equations in ``optim.reference.signsgd``'s docstring.
"""
import triton
import triton.language as tl

from kernels.elementwise import hyperparameter, sign


@triton.jit
def signsgd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr = hyperparameter(hyper.lr)
    return param * (1.0 - lr * hyper.weight_decay) - lr * sign(grad), ()
