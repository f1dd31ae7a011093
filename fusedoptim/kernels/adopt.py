"""ADOPT (Taniguchi et al. 2024): the fused update, in pytorch-optimizer's ADOPT's order, and with caution
(Liang et al. 2024) the reduce that counts where its step agrees with the normalized gradient.

The equations are in ``optim.reference.adopt``'s docstring. The first step only makes v = g² (the
launcher's FLAGS.FIRST_STEP); each later one normalizes g by the v of the steps before it.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import agreement, cautious, coupled_gradient, decoupled_decay, hyperparameter


@triton.jit
def adopt_step(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """(θ decayed, ĝ the normalized gradient, the step η·m, the new states); on the first step ĝ = g and the
    step is 0 (θ moves only by its decay). Caution masks the step against ĝ, not g, as pytorch-optimizer's
    cautious ADOPT: the two differ where g/max(√v, ε) rounds to 0 (an infinite v)."""
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
    if FLAGS.FIRST_STEP:  # v is made by this step
        return param, grad, 0.0 * exp_avg, (exp_avg, grad * grad)
    exp_avg_sq = states[FLAGS.EXP_AVG_SQ_INDEX]
    # g / max(√v, ε), clipped to ±t^¼; NaN propagates through both, as torch's clamp
    denom = tl.maximum(tl.sqrt(exp_avg_sq), eps, propagate_nan=tl.PropagateNan.ALL)
    clip = tl.sqrt(tl.sqrt(step))
    normed = tl.minimum(tl.maximum(grad / denom, -clip, propagate_nan=tl.PropagateNan.ALL), clip,
                        propagate_nan=tl.PropagateNan.ALL)
    exp_avg = exp_avg + (1.0 - beta1) * (normed - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad  # after the normalization, which reads the old v
    return param, normed, lr * exp_avg, (exp_avg, exp_avg_sq)


@triton.jit
def adopt_agreement(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, normed, step, new_states = adopt_step(param, grad, states, scalars, hyper, FLAGS)
    return (agreement(step, normed),)


@triton.jit
def adopt_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, normed, step, new_states = adopt_step(param, grad, states, scalars, hyper, FLAGS)
    if FLAGS.FIRST_STEP:  # θ exactly as decayed: no step
        return param, new_states
    return param - cautious(step, normed, scalars, 1, FLAGS), new_states  # scalars: step, then the agreement
