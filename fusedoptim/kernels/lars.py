"""LARS (You et al. 2017), as pytorch-optimizer's LARS: the fused update and the reduce of its norms.

Equations in ``optim.reference.lars``'s docstring. Per tensor the kernels receive, as scalars: 1 for a
tensor of two or more dimensions (trust ratio and weight decay) or 0 (plain momentum SGD), then the two
sums Σθ² and Σg² the reduce adds up over the whole tensor (every FSDP2 shard of it) before the update.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import hyperparameter


@triton.jit
def lars_reduce(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """Σθ² and Σg² (the sign of a maximized g does not change its norm)."""
    return param * param, grad * grad


@triton.jit
def lars_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    takes_trust, param_square, grad_square = scalars
    lr, momentum, weight_decay = hyperparameter(hyper.lr), hyper.momentum, hyper.weight_decay
    if FLAGS.MAXIMIZE:
        grad = -grad
    param_norm, grad_norm = tl.sqrt(param_square), tl.sqrt(grad_square)
    denominator = grad_norm + weight_decay * param_norm
    trust = tl.where((param_norm > 0.0) & (denominator > 0.0), hyper.trust_coefficient * param_norm / denominator, 1.0)
    grad = tl.where(takes_trust > 0.0, (grad + weight_decay * param) * trust, grad)
    new_states = ()
    if FLAGS.HAS_MOMENTUM:
        # the buffer starts at zero (not at g, as torch's SGD): dampened from the first step, as the peer
        buffer = momentum * states[FLAGS.MOMENTUM_BUFFER_INDEX] + (1.0 - hyper.dampening) * grad
        if FLAGS.NESTEROV:
            grad = grad + momentum * buffer
        else:
            grad = buffer
        new_states = (buffer,)
    return param - lr * grad, new_states
