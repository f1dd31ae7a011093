"""Exponentiated gradient (Kivinen & Warmuth 1997) for non-negative parameters.

Equations in ``optim.reference.eg``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import hyperparameter


@triton.jit
def eg_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr = hyperparameter(hyper.lr)
    return param * tl.exp(-lr * grad), ()
