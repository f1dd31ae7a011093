"""SGD with momentum, dampening, Nesterov, L2 weight decay and maximize, in torch.optim.SGD's order;
with caution (Liang et al. 2024) the reduce that counts where its step agrees with the gradient.

Equations in ``optim.reference.sgd``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import agreement, cautious, coupled_gradient, hyperparameter


@triton.jit
def sgd_step(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """(g after maximize and L2, the step η·d that caution masks, the new states)."""
    lr, momentum, dampening = hyperparameter(hyper.lr), hyper.momentum, hyper.dampening
    grad = coupled_gradient(grad, param, hyper.weight_decay, FLAGS.MAXIMIZE)
    direction = grad
    new_states = ()
    if FLAGS.HAS_MOMENTUM:
        if FLAGS.FIRST_STEP:  # the momentum buffer is made by this step
            buffer = grad  # torch: the first buffer is the gradient itself, undampened
        else:
            buffer = momentum * states[FLAGS.MOMENTUM_BUFFER_INDEX] + (1.0 - dampening) * grad
        if FLAGS.NESTEROV:
            direction = grad + momentum * buffer
        else:
            direction = buffer
        new_states = (buffer,)
    return grad, lr * direction, new_states


@triton.jit
def sgd_agreement(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    grad, step, new_states = sgd_step(param, grad, states, scalars, hyper, FLAGS)
    return (agreement(step, grad),)


@triton.jit
def sgd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    grad, step, new_states = sgd_step(param, grad, states, scalars, hyper, FLAGS)
    return param - cautious(step, grad, scalars, 0, FLAGS), new_states
