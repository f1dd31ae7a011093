"""AdEMAMix (Pagliardini et al. 2024): the fused update, in the authors' order (apple/ml-ademamix), and with
caution (Liang et al. 2024) the reduce that counts where the fast EMA agrees with the gradient.

The equations are in ``optim.reference.ademamix``'s docstring. α_t and 1 − β3_t, warmed up from the step,
are scalar states its row advances on the device before this launch
(``optim.reference.ademamix.advance_alpha_and_slow_weight``, a ScalarUpdate): computed in fp64 there,
1 − β3_t ≈ 1e-4 keeps digits that 1 − β3_t in fp32 here would lose.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import agreement, bias_correction, cautious, decoupled_decay, hyperparameter


@triton.jit
def ademamix_moments(grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """The three EMAs' new values (m1, m2, ν). Caution masks m1 alone, against g (pytorch-optimizer's
    cautious AdEMAMix); the reduce and the update both run this."""
    beta1, beta2, slow_weight = hyper.beta1, hyper.beta2, scalars[2]  # scalars[2]: this step's 1 − β3_t
    exp_avg_fast = states[FLAGS.EXP_AVG_FAST_INDEX]
    exp_avg_fast = exp_avg_fast + (1.0 - beta1) * (grad - exp_avg_fast)
    exp_avg_slow = states[FLAGS.EXP_AVG_SLOW_INDEX]
    exp_avg_slow = exp_avg_slow + slow_weight * (grad - exp_avg_slow)
    exp_avg_sq = beta2 * states[FLAGS.EXP_AVG_SQ_INDEX] + (1.0 - beta2) * grad * grad
    return exp_avg_fast, exp_avg_slow, exp_avg_sq


@triton.jit
def ademamix_agreement(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    exp_avg_fast, exp_avg_slow, exp_avg_sq = ademamix_moments(grad, states, scalars, hyper, FLAGS)
    return (agreement(exp_avg_fast, grad),)


@triton.jit
def ademamix_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, eps, weight_decay = hyperparameter(hyper.lr), hyper.eps, hyper.weight_decay
    step, alpha = scalars[0], scalars[1]  # this step's t and α_t
    exp_avg_fast, exp_avg_slow, exp_avg_sq = ademamix_moments(grad, states, scalars, hyper, FLAGS)
    fast = cautious(exp_avg_fast, grad, scalars, 3, FLAGS)  # scalars[3]: the agreement, with caution
    # (m1/(1 − β1ᵗ) + α·m2) / (√ν/√(1 − β2ᵗ) + ε), numerator and denominator times 1 − β1ᵗ: the
    # bias corrections fold into three numbers per tensor, where a division per element by each would
    # cost int4 states their ALU budget (tests/test_alu_budget.py); the results differ by fp32 roundings.
    bias_correction1 = bias_correction(hyper.beta1, step)
    denom = tl.sqrt(exp_avg_sq) * (bias_correction1 / tl.sqrt(bias_correction(hyper.beta2, step))) + eps * bias_correction1
    update = (fast + (alpha * bias_correction1) * exp_avg_slow) / denom
    # The authors' θ − lr·(update + λθ) as θ·(1 − lr·λ) − lr·update (pytorch-optimizer's order): equal to
    # rounding, a select fewer per element, and an infinite θ stays so at λ = 0 (0·inf would be NaN)
    return decoupled_decay(param, lr, weight_decay) - lr * update, (exp_avg_fast, exp_avg_slow, exp_avg_sq)
