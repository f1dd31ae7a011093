"""ADOPT (Taniguchi et al. 2024): the fused update, in pytorch-optimizer's ADOPT's order.

The equations are in ``optim.reference.adopt``'s docstring. The first step only makes v = g² (the
launcher's FLAGS.FIRST_STEP); each later one normalizes g by the v of the steps before it.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import coupled_gradient, decoupled_decay, hyperparameter


@triton.jit
def adopt_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    eps, weight_decay = hyper.eps, hyper.weight_decay
    step = scalars[0]  # already counts this step: 1 on the first
    if FLAGS.WEIGHT_DECOUPLE:
        if FLAGS.FIXED_DECAY:  # θ ← θ·(1 − λ), the lr not scaling it
            param = decoupled_decay(param, 1.0, weight_decay)
        else:
            param = decoupled_decay(param, lr, weight_decay)
        grad = coupled_gradient(grad, param, 0.0, FLAGS.MAXIMIZE)
    else:
        grad = coupled_gradient(grad, param, weight_decay, FLAGS.MAXIMIZE)
    exp_avg = states[FLAGS.EXP_AVG_INDEX]
    if FLAGS.FIRST_STEP:  # v is made by this step, and θ does not move (but for its decay)
        return param, (exp_avg, grad * grad)
    exp_avg_sq = states[FLAGS.EXP_AVG_SQ_INDEX]
    # g / max(√v, ε), clipped to ±t^¼; NaN propagates through both, as torch's clamp
    denom = tl.maximum(tl.sqrt(exp_avg_sq), eps, propagate_nan=tl.PropagateNan.ALL)
    clip = tl.sqrt(tl.sqrt(step))
    normed = tl.minimum(tl.maximum(grad / denom, -clip, propagate_nan=tl.PropagateNan.ALL), clip,
                        propagate_nan=tl.PropagateNan.ALL)
    exp_avg = exp_avg + (1.0 - beta1) * (normed - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad  # after the normalization, which reads the old v
    return param - lr * exp_avg, (exp_avg, exp_avg_sq)
