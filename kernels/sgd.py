"""SGD with momentum, dampening, Nesterov, L2 weight decay and maximize, in torch.optim.SGD's order.

Equations in ``optim.reference.sgd``'s docstring.
"""
import triton
import triton.language as tl

from kernels.elementwise import coupled_gradient, hyperparameter


@triton.jit
def sgd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    HAS_MOMENTUM: tl.constexpr = FLAGS[0]
    NESTEROV: tl.constexpr = FLAGS[1]
    MAXIMIZE: tl.constexpr = FLAGS[2]
    FIRST_STEP: tl.constexpr = FLAGS[3]  # the momentum buffer is made by this step
    lr, momentum, dampening, weight_decay = hyper
    lr = hyperparameter(lr)
    grad = coupled_gradient(grad, param, weight_decay, MAXIMIZE)
    new_states = ()
    if HAS_MOMENTUM:
        if FIRST_STEP:
            buffer = grad  # torch: the first buffer is the gradient itself, undampened
        else:
            buffer = momentum * states[0] + (1.0 - dampening) * grad
        if NESTEROV:
            grad = grad + momentum * buffer
        else:
            grad = buffer
        new_states = (buffer,)
    return param - lr * grad, new_states


def sgd_arguments(group):
    hyper = (group["lr"], float(group["momentum"]), float(group["dampening"]), float(group["weight_decay"]))
    return hyper, (group["momentum"] != 0, bool(group["nesterov"]), bool(group["maximize"]))
