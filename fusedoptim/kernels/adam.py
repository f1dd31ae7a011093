"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): the fused update, and with caution
(Liang et al. 2024) the reduce that counts where its step agrees with the gradient.

The equations, and torch's order of operations that this math follows, are in
``optim.reference.adam``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import adam_moments, agreement, bias_correction, cautious, hyperparameter


@triton.jit
def adam_step(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """The rule's math up to its step Δ (θ ← θ − Δ), which caution masks: (θ decayed, g, Δ, new states).
    Both the update and the reduce run it."""
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    eps, weight_decay = hyper.eps, hyper.weight_decay
    step = scalars[0]  # already counts this step: 1 on the first
    param, grad, exp_avg, exp_avg_sq = adam_moments(param, grad, states[FLAGS.EXP_AVG_INDEX],
                                                    states[FLAGS.EXP_AVG_SQ_INDEX], lr, beta1, beta2, weight_decay, FLAGS)
    bias_correction1 = bias_correction(beta1, step)
    bias_correction2_sqrt = tl.sqrt(bias_correction(beta2, step))
    if FLAGS.AMSGRAD:
        # NaN wins, as in torch.maximum (the default maximum returns the other operand)
        max_exp_avg_sq = tl.maximum(states[FLAGS.MAX_EXP_AVG_SQ_INDEX], exp_avg_sq, propagate_nan=tl.PropagateNan.ALL)
        denom = tl.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
        new_states = (exp_avg, exp_avg_sq, max_exp_avg_sq)
    else:
        denom = tl.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        new_states = (exp_avg, exp_avg_sq)
    # (step size·m)/denom, torch's order (addcdiv): where the product overflows, torch's θ is ±inf or NaN
    return param, grad, ((lr / bias_correction1) * exp_avg) / denom, new_states


@triton.jit
def adam_agreement(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, grad, step, new_states = adam_step(param, grad, states, scalars, hyper, FLAGS)
    return (agreement(step, grad),)


@triton.jit
def adam_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, grad, step, new_states = adam_step(param, grad, states, scalars, hyper, FLAGS)
    return param - cautious(step, grad, scalars, 1, FLAGS), new_states  # scalars: step, then the agreement
