"""RAdam (Liu et al. 2020): the fused update, in torch.optim.RAdam's order.

The equations, and the order of operations this math follows, are in ``optim.reference.radam``'s
docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import adam_moments, hyperparameter


@triton.jit
def radam_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    eps, weight_decay = hyper.eps, hyper.weight_decay
    param, grad, exp_avg, exp_avg_sq = adam_moments(param, grad, states[FLAGS.EXP_AVG_INDEX],
                                                    states[FLAGS.EXP_AVG_SQ_INDEX], lr, beta1, beta2, weight_decay, FLAGS)

    # The per-step scalars in fp64, as torch computes them (Python floats). ρ_t is a difference of two
    # terms near ρ∞ = 2/(1 − β2) − 1 (1999 at β2 = 0.999), the second as inexact as 1 − β2ᵗ: in fp32 it
    # is off by up to 0.013 in the first steps at β2 = 0.999, 0.2% of the rectification term at step 6,
    # and ρ_5 = 4.996 lies that close to the threshold 5. Scalars of the block, from the device step
    # counter: no host sync.
    step = scalars[0].to(tl.float64)  # already counts this step: 1 on the first
    beta1_64, beta2_64 = tl.cast(beta1, tl.float64), tl.cast(beta2, tl.float64)
    bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1_64))
    beta2_power = tl.exp2(step * tl.log2(beta2_64))
    bias_correction2 = 1.0 - beta2_power
    rho_inf = 2.0 / (1.0 - beta2_64) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2_power / bias_correction2

    # The element-wise math in fp32, torch's order: ((m̂·η)·√(1 − β2ᵗ)/(√v + ε))·r, or m̂·η. The branch
    # follows the step count alone: one for the whole block, taken as torch takes it.
    update = (exp_avg / bias_correction1.to(tl.float32)) * lr
    if rho_t > 5.0:
        rect = tl.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        adaptive_lr = tl.sqrt(bias_correction2).to(tl.float32) / (tl.sqrt(exp_avg_sq) + eps)
        update = update * adaptive_lr * rect.to(tl.float32)
    return param - update, (exp_avg, exp_avg_sq)
