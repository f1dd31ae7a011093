"""Rprop, resilient backpropagation (Riedmiller & Braun 1993): the fused update.

The equations, and torch's order of operations that this math follows, are in
``optim.reference.rprop``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import sign


@triton.jit
def rprop_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    if FLAGS.MAXIMIZE:
        grad = -grad
    prev, step_size = states[FLAGS.PREV_INDEX], states[FLAGS.STEP_SIZE_INDEX]
    agreement = sign(grad * prev)  # NaN stays NaN (torch.sign on CUDA; on the CPU torch's is 0)
    # Each step size's factor: etaplus where g keeps its sign, etaminus where it flips, 1 where either is 0
    factor = tl.where(agreement > 0, hyper.etaplus,
                      tl.where(agreement < 0, hyper.etaminus, tl.where(agreement == 0, 1.0, agreement)))
    # NaN stays NaN, as in torch's clamp_ (the default maximum and minimum return the other operand)
    step_size = tl.minimum(tl.maximum(step_size * factor, hyper.step_size_min, propagate_nan=tl.PropagateNan.ALL),
                           hyper.step_size_max, propagate_nan=tl.PropagateNan.ALL)
    # Where the sign flipped, g counts as 0: θ holds still this step, and the next step's factor is 1.
    # (torch zeroes where the factor equals etaminus: the same places, as 0 < etaminus < 1 < etaplus.)
    grad = tl.where(agreement < 0, 0.0, grad)
    param = param - sign(grad) * step_size
    return param, (grad, step_size)
