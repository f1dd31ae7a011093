"""RMSprop (Hinton's lecture 6e, 2012; centered: Graves 2013), in torch.optim.RMSprop's order.

Equations in ``optim.reference.rmsprop``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def rmsprop_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    HAS_MOMENTUM: tl.constexpr = FLAGS.HAS_MOMENTUM
    lr, alpha, eps, momentum = hyperparameter(hyper.lr), hyper.alpha, hyper.eps, hyper.momentum
    grad = coupled_gradient(grad, param, hyper.weight_decay, FLAGS.MAXIMIZE)
    square_avg = alpha * states[FLAGS.SQUARE_AVG_INDEX] + (1.0 - alpha) * grad * grad
    new_states = (square_avg,)
    if FLAGS.CENTERED:
        grad_avg = states[FLAGS.GRAD_AVG_INDEX]
        grad_avg = grad_avg + (1.0 - alpha) * (grad - grad_avg)
        # v − ḡ² rounded once (torch's addcmul is a fused multiply-add): ḡ² alone can overflow to inf
        # where v − ḡ² does not, and inf − inf would be NaN where torch stays finite
        avg = tl.sqrt(tl.fma(-grad_avg, grad_avg, square_avg)) + eps
    else:
        avg = tl.sqrt(square_avg) + eps  # eps after the square root
    if HAS_MOMENTUM:
        buffer = momentum * states[FLAGS.MOMENTUM_BUFFER_INDEX] + grad / avg
        param = param - lr * buffer
        new_states = new_states + (buffer,)
    else:
        param = param - (lr * grad) / avg  # torch's order (addcdiv): η·g may overflow where g/avg does not
    if FLAGS.CENTERED:
        new_states = new_states + (grad_avg,)
    return param, new_states
