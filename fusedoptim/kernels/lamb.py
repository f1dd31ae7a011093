"""LAMB (You et al. 2019): the fused update and the reduce of its trust ratio's two norms.

Equations in ``optim.reference.lamb``'s docstring. The trust ratio ‖θ‖/‖u‖ needs the norm of this
step's direction u = r + λθ, and r reads the NEW m and v. The reduce launch runs before the update,
on the old states, so it recomputes m and v from (g, m, v) by the same ``lamb_direction`` the update
runs, without storing them: it reads θ, g, m and v (the byte model's ``reads`` on the row), and the
update then makes the same u to the bit.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import bias_correction, hyperparameter


@triton.jit
def lamb_direction(param, grad, exp_avg, exp_avg_sq, step, hyper, FLAGS: tl.constexpr):
    """(m, v, u) of this step from the old m and v: u = m̂/(√v̂ + ε) + λθ."""
    beta1, beta2 = hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    if FLAGS.MAXIMIZE:
        grad = -grad
    exp_avg = beta1 * exp_avg + (1.0 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    adam = (exp_avg / bias_correction(beta1, step)) / (tl.sqrt(exp_avg_sq / bias_correction(beta2, step)) + hyper.eps)
    # only where λ ≠ 0: 0·θ of an infinite θ would be NaN
    direction = tl.where(hyper.weight_decay != 0.0, adam + hyper.weight_decay * param, adam)
    return exp_avg, exp_avg_sq, direction


@triton.jit
def lamb_reduce(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """Σθ² and Σu² of the tensor, u from this step's m and v (recomputed here, not stored)."""
    _, _, direction = lamb_direction(param, grad, states[FLAGS.EXP_AVG_INDEX], states[FLAGS.EXP_AVG_SQ_INDEX],
                                     scalars[0], hyper, FLAGS)
    return param * param, direction * direction


@triton.jit
def lamb_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    step, param_square, direction_square = scalars  # step already counts this one: 1 on the first
    exp_avg, exp_avg_sq, direction = lamb_direction(param, grad, states[FLAGS.EXP_AVG_INDEX],
                                                    states[FLAGS.EXP_AVG_SQ_INDEX], step, hyper, FLAGS)
    param_norm, direction_norm = tl.sqrt(param_square), tl.sqrt(direction_square)
    trust = tl.where((param_norm > 0.0) & (direction_norm > 0.0), param_norm / direction_norm, 1.0)
    return param - hyperparameter(hyper.lr) * trust * direction, (exp_avg, exp_avg_sq)
