"""SGD with hypergradient descent on its learning rate (Baydin et al. 2018, "Online Learning Rate
Adaptation with Hypergradient Descent").

Equations in ``optim.reference.sgdhd``'s docstring; the host side is ``optim.sgdhd``. The learned
rate α lives in group["lr"] as a 0-d fp32 tensor on the params' device: the reduce launch adds
β·⟨g, g_prev⟩ to it on the device (one pass over g and g_prev, no host sync), then the update reads it.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import hyperparameter


@triton.jit
def sgdhd_hypergradient(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return (hyper.hypergrad_lr * grad * states[FLAGS.PREV_GRAD_INDEX],)  # summed over the group: β·⟨g, g_prev⟩


@triton.jit
def sgdhd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr = hyperparameter(hyper.lr)  # α, already moved by this step's hypergradient
    return param - lr * grad, (grad,)
