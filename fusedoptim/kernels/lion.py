"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the fused update.

Equations in ``optim.reference.lion``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import decoupled_decay, hyperparameter, sign


@triton.jit
def lion_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    exp_avg = states[FLAGS.EXP_AVG_INDEX]
    weight_decay = hyper.weight_decay
    if FLAGS.DECOUPLED_WEIGHT_DECAY:  # lion-pytorch's: λ relative to the lr at construction η₀
        weight_decay = weight_decay / hyperparameter(hyper.lr_at_construction)
    param = decoupled_decay(param, lr, weight_decay)
    update = sign(beta1 * exp_avg + (1.0 - beta1) * grad)
    param = param - lr * update
    exp_avg = beta2 * exp_avg + (1.0 - beta2) * grad
    return param, (exp_avg,)
