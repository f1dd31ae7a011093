"""Per-coordinate step sizes learned by exponentiated gradient (a simplified Amid et al. 2022).

Equations in ``optim.reference.egstepsize``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import hyperparameter


@triton.jit
def egstepsize_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    step_size, prev_grad = states[FLAGS.STEP_SIZE_INDEX], states[FLAGS.PREV_GRAD_INDEX]
    step_size = step_size * tl.exp(hyper.gamma * prev_grad * grad)  # grows where successive gradients agree
    if FLAGS.HAS_BOUNDS:
        # NaN stays NaN, as in the oracle's clamp (the default maximum returns the other operand)
        step_size = tl.minimum(tl.maximum(step_size, hyper.low, propagate_nan=tl.PropagateNan.ALL), hyper.high,
                               propagate_nan=tl.PropagateNan.ALL)
    return param - hyperparameter(hyper.lr) * step_size * grad, (step_size, grad)
