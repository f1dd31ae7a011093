"""AdEMAMix (Pagliardini et al. 2024): the fused update, in the authors' order (apple/ml-ademamix).

The equations are in ``optim.reference.ademamix``'s docstring. α_t and 1 − β3_t, warmed up from the step,
are scalar states its row advances on the device before this launch
(``optim.reference.ademamix.advance_alpha_and_slow_weight``, a ScalarUpdate): computed in fp64 there,
1 − β3_t ≈ 1e-4 keeps digits that 1 − β3_t in fp32 here would lose.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import bias_correction, hyperparameter


@triton.jit
def ademamix_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, eps, weight_decay = hyperparameter(hyper.lr), hyper.eps, hyper.weight_decay
    beta1, beta2 = hyper.beta1, hyper.beta2
    step, alpha, slow_weight = scalars[0], scalars[1], scalars[2]  # this step's t, α_t and 1 − β3_t
    exp_avg_fast = states[FLAGS.EXP_AVG_FAST_INDEX]
    exp_avg_fast = exp_avg_fast + (1.0 - beta1) * (grad - exp_avg_fast)
    exp_avg_slow = states[FLAGS.EXP_AVG_SLOW_INDEX]
    exp_avg_slow = exp_avg_slow + slow_weight * (grad - exp_avg_slow)
    exp_avg_sq = beta2 * states[FLAGS.EXP_AVG_SQ_INDEX] + (1.0 - beta2) * grad * grad
    denom = tl.sqrt(exp_avg_sq) / tl.sqrt(bias_correction(beta2, step)) + eps
    update = (exp_avg_fast / bias_correction(beta1, step) + alpha * exp_avg_slow) / denom
    # AdamW's decay, λθ of the θ before the step, skipped at λ = 0 (0·θ of an infinite θ would be NaN)
    update = tl.where(weight_decay != 0.0, update + weight_decay * param, update)
    return param - lr * update, (exp_avg_fast, exp_avg_slow, exp_avg_sq)
