"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the fused update, and with
caution (Liang et al. 2024) the reduce that counts where its step agrees with the gradient.

Equations in ``optim.reference.lion``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import agreement, cautious, decoupled_decay, hyperparameter, sign


@triton.jit
def lion_step(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """(θ decayed, η·sign(β1·m + (1 − β1)·g): the step caution masks, m's new value)."""
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    exp_avg = states[FLAGS.EXP_AVG_INDEX]
    weight_decay = hyper.weight_decay
    if FLAGS.DECOUPLED_WEIGHT_DECAY:  # lion-pytorch's: λ relative to the lr at construction η₀
        weight_decay = weight_decay / hyperparameter(hyper.lr_at_construction)
    param = decoupled_decay(param, lr, weight_decay)
    step = lr * sign(beta1 * exp_avg + (1.0 - beta1) * grad)
    return param, step, beta2 * exp_avg + (1.0 - beta2) * grad


@triton.jit
def lion_agreement(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, step, exp_avg = lion_step(param, grad, states, scalars, hyper, FLAGS)
    return (agreement(step, grad),)


@triton.jit
def lion_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param, step, exp_avg = lion_step(param, grad, states, scalars, hyper, FLAGS)
    return param - cautious(step, grad, scalars, 0, FLAGS), (exp_avg,)
