"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): the fused update.

The equations, and torch's order of operations that this math follows, are in
``optim.reference.adam``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import adam_moments, bias_correction, hyperparameter


@triton.jit
def adam_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
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
    param = param - ((lr / bias_correction1) * exp_avg) / denom
    return param, new_states
