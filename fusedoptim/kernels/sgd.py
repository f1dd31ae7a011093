"""SGD with momentum, dampening, Nesterov, L2 weight decay and maximize, in torch.optim.SGD's order.

Equations in ``optim.reference.sgd``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def sgd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, momentum, dampening = hyperparameter(hyper.lr), hyper.momentum, hyper.dampening
    grad = coupled_gradient(grad, param, hyper.weight_decay, FLAGS.MAXIMIZE)
    new_states = ()
    if FLAGS.HAS_MOMENTUM:
        if FLAGS.FIRST_STEP:  # the momentum buffer is made by this step
            buffer = grad  # torch: the first buffer is the gradient itself, undampened
        else:
            buffer = momentum * states[FLAGS.MOMENTUM_BUFFER_INDEX] + (1.0 - dampening) * grad
        if FLAGS.NESTEROV:
            grad = grad + momentum * buffer
        else:
            grad = buffer
        new_states = (buffer,)
    return param - lr * grad, new_states
