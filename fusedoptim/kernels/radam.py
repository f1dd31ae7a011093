"""RAdam (Liu et al. 2020): the fused update, in torch.optim.RAdam's order.

The equations, and the order of operations this math follows, are in ``optim.reference.radam``'s
docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import adam_moments, bias_correction, hyperparameter


@triton.jit
def radam_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    eps, weight_decay = hyper.eps, hyper.weight_decay
    param, grad, exp_avg, exp_avg_sq = adam_moments(param, grad, states[FLAGS.EXP_AVG_INDEX],
                                                    states[FLAGS.EXP_AVG_SQ_INDEX], lr, beta1, beta2, weight_decay, FLAGS)

    # ρ_t in fp64, as torch computes it (Python floats): it is a difference of two terms near
    # ρ∞ = 2/(1 − β2) − 1 (1999 at β2 = 0.999), the second as inexact as 1 − β2ᵗ: in fp32 it is off by
    # up to 0.013 in the first steps at β2 = 0.999, 0.2% of the rectification term at step 6, and
    # ρ_5 = 4.996 lies that close to the threshold 5. Scalars of the block, from the device step counter:
    # no host sync. Only the fp64 that this needs: the compiler repeats this scalar math for every block,
    # and each fp64 exp2, log2, division or root costs tens of instructions (RAdam's int4 states were over
    # their ALU budget, tests/test_alu_budget.py). log2 β2 is taken in fp32: ρ_t moves by about 3e-5 at
    # β2 = 0.999, less than β2's own rounding to fp32 (a kernel argument) moves it from step 100 on, and
    # 100 times less than ρ_5's distance to 5. What is only multiplied into the update (1 − β1ᵗ,
    # √(1 − β2ᵗ), the rectification's root) is fp32, as in Adam, within an ulp or two of torch's value.
    step = scalars[0]  # already counts this step: 1 on the first
    step_64, beta2_64 = step.to(tl.float64), tl.cast(beta2, tl.float64)
    beta2_power = tl.exp2(step_64 * tl.log2(beta2).to(tl.float64))
    bias_correction2 = 1.0 - beta2_power
    rho_inf = 2.0 / (1.0 - beta2_64) - 1.0
    rho_t = rho_inf - 2.0 * step_64 * beta2_power / bias_correction2

    # θ ← θ − s·m/(√v + ε), s = η/(1 − β1ᵗ)·√(1 − β2ᵗ)·r; or θ ← θ − s·m, s = η/(1 − β1ᵗ): torch's
    # factors, the scalar ones multiplied first, so that an element costs one product and one division.
    # The branch follows the step count alone: one for the whole block, taken as torch takes it.
    step_size = lr / bias_correction(beta1, step)
    if rho_t > 5.0:
        rho_t_32, rho_inf_32 = rho_t.to(tl.float32), rho_inf.to(tl.float32)
        rect = tl.sqrt((rho_t_32 - 4.0) * (rho_t_32 - 2.0) * rho_inf_32
                       / ((rho_inf_32 - 4.0) * (rho_inf_32 - 2.0) * rho_t_32))
        update = step_size * tl.sqrt(bias_correction2.to(tl.float32)) * rect * exp_avg / (tl.sqrt(exp_avg_sq) + eps)
    else:
        update = step_size * exp_avg
    return param - update, (exp_avg, exp_avg_sq)
