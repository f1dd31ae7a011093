"""SignSGD (Bernstein et al. 2018) with decoupled weight decay.

Equations in ``optim.reference.signsgd``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import decoupled_decay, hyperparameter, sign


@triton.jit
def signsgd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr = hyperparameter(hyper.lr)
    return decoupled_decay(param, lr, hyper.weight_decay) - lr * sign(grad), ()
