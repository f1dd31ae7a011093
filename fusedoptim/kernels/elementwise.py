"""Small @triton.jit helpers that the rules' math shares."""
import triton
import triton.language as tl


@triton.jit
def hyperparameter(value):
    """A hyperparameter as fp32, whether it came as a Python number or a 0-d device tensor."""
    # The interpreter passes Python floats through unwrapped; the compiler makes them fp32 scalars.
    if hasattr(value, "dtype"):
        if value.dtype.is_ptr():
            value = tl.load(value).to(tl.float32)
    return value


@triton.jit
def sign(x):
    """torch.sign: -1, 0 or +1 (and NaN stays NaN, as in torch)."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, x))


@triton.jit
def coupled_gradient(grad, param, weight_decay, MAXIMIZE: tl.constexpr):
    """torch.optim's prologue: g ← −g when maximizing, then L2 weight decay g ← g + λθ, only where
    λ ≠ 0 (as torch skips it): 0·θ of an infinite θ would make the gradient NaN."""
    if MAXIMIZE:
        grad = -grad
    return tl.where(weight_decay != 0.0, grad + weight_decay * param, grad)


@triton.jit
def never(scalars, hyper, FLAGS: tl.constexpr):
    """A ``PARAM_ACTIVE`` for a reduction that does not read θ (SGDHD's ⟨g, g_prev⟩)."""
    return False


@triton.jit
def decoupled_decay(param, lr, weight_decay):
    """Decoupled weight decay (Loshchilov & Hutter 2019): θ ← θ·(1 − η·λ), before the update."""
    return param * (1.0 - lr * weight_decay)


@triton.jit
def bias_correction(beta, step):
    """1 − βᵗ, as exp2(t·log2 β): fp32 throughout, from the device step counter (no host value of t)."""
    return 1.0 - tl.exp2(step * tl.log2(beta))


@triton.jit
def adam_moments(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, weight_decay, FLAGS: tl.constexpr):
    """The Adam family's first half, in torch's order (Adam, AdamW, RAdam, NAdam): weight decay,
    decoupled (θ ← θ·(1 − η·λ), FLAGS.DECOUPLED_WEIGHT_DECAY) or coupled into g, then
    m ← β1·m + (1 − β1)·g (torch's lerp_ for weights below 0.5) and v ← β2·v + (1 − β2)·g².
    Returns (θ, g, m, v)."""
    if FLAGS.DECOUPLED_WEIGHT_DECAY:
        param = decoupled_decay(param, lr, weight_decay)
        grad = coupled_gradient(grad, param, 0.0, FLAGS.MAXIMIZE)
    else:
        grad = coupled_gradient(grad, param, weight_decay, FLAGS.MAXIMIZE)
    exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    return param, grad, exp_avg, exp_avg_sq


@triton.jit
def agreement(step, grad):
    """Caution's mask (Liang et al. 2024): 1 where the step agrees in sign with the gradient, else 0.
    A rule's reduce sums it (``optim.rule.caution``, a mean over the tensor) from the same step its
    update takes, before the update applies it."""
    return tl.where(step * grad > 0.0, 1.0, 0.0)


@triton.jit
def cautious(step, grad, scalars, AGREEMENT: tl.constexpr, FLAGS: tl.constexpr):
    """With FLAGS.CAUTIOUS, the step masked where it disagrees with g and divided by the fraction of the
    tensor kept, u·φ/max(mean φ, 1e-3) (the floor: the paper's, so that a tensor that almost all
    disagrees is not blown up); ``scalars[AGREEMENT]`` is that mean. Without, the step as it was."""
    if FLAGS.CAUTIOUS:
        # u·φ, not where(φ, u, 0): a NaN step stays NaN, as in the oracle
        step = step * agreement(step, grad) / tl.maximum(scalars[AGREEMENT], 1e-3)
    return step
