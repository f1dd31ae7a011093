"""Schedule-Free AdamW and SGD (Defazio et al. 2024): the fused updates, in the order of the authors'
package ``schedulefree``.

The equations are in ``optim.reference.schedule_free``'s docstring. The averaging weight c_t = w_t/W_t
(ckp1) comes from running scalars (γ_max, W_t) that every program of a tensor reads: its row advances
them on the device before this launch (``optim.reference.schedule_free.advance_schedule_free``, a
ScalarUpdate), and the kernel reads c_t as scalars[3] (scalars: step, lr_max, weight_sum, ckp1).
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import bias_correction, hyperparameter


@triton.jit
def scheduled_lr(lr, warmup_steps, step):
    """γ_t = lr·min(t / W, 1), the package's linear warm-up ((k + 1)/W while k < W); none for W = 0."""
    return lr * tl.minimum(step / tl.maximum(warmup_steps, 1.0), 1.0)


@triton.jit
def interpolate(y, z, normalized, ckp1, lr, beta):
    """y ← lerp(y, z, c) + γ(β(1 − c) − 1)·ĝ, z ← z − γ·ĝ; lerp as torch computes it (from the nearer end)."""
    y = tl.where(ckp1 < 0.5, y + ckp1 * (z - y), z - (z - y) * (1.0 - ckp1))
    y = y + normalized * (lr * (beta * (1.0 - ckp1) - 1.0))
    z = z - normalized * lr
    return y, z


@triton.jit
def schedule_free_adamw_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    step, ckp1 = scalars[0], scalars[3]  # the step already counted (1 on the first); c_t already advanced
    beta1, beta2 = hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    lr = scheduled_lr(hyperparameter(hyper.lr), hyper.warmup_steps, step)
    if FLAGS.FIRST_STEP:  # z is made by this step: a copy of y
        z = param
    else:
        z = states[FLAGS.Z_INDEX]
    exp_avg_sq = states[FLAGS.EXP_AVG_SQ_INDEX] * beta2 + (1.0 - beta2) * grad * grad
    denom = tl.sqrt(exp_avg_sq / bias_correction(beta2, step)) + hyper.eps
    normalized = grad / denom
    # λ·y added where λ ≠ 0 only, as the package skips it (0·y of an infinite y would be NaN)
    normalized = tl.where(hyper.weight_decay != 0.0, normalized + hyper.weight_decay * param, normalized)
    param, z = interpolate(param, z, normalized, ckp1, lr, beta1)
    return param, (z, exp_avg_sq)


@triton.jit
def schedule_free_sgd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    step, ckp1 = scalars[0], scalars[3]
    lr = scheduled_lr(hyperparameter(hyper.lr), hyper.warmup_steps, step)
    if FLAGS.FIRST_STEP:
        z = param
    else:
        z = states[FLAGS.Z_INDEX]
    normalized = tl.where(hyper.weight_decay != 0.0, grad + hyper.weight_decay * param, grad)
    param, z = interpolate(param, z, normalized, ckp1, lr, hyper.momentum)
    return param, (z,)
