"""SGD with hypergradient descent on its learning rate (Baydin et al. 2018, "Online Learning Rate
Adaptation with Hypergradient Descent").

Equations in ``optim.reference.sgdhd``'s docstring. The learned rate α lives in group["lr"] as a
0-d fp32 tensor on the params' device: a multi-tensor reduction adds β·⟨g, g_prev⟩ to it on the
device (one pass over g and g_prev, no host sync), then the update reads it.
"""
import torch
import triton
import triton.language as tl

from kernels.elementwise import hyperparameter
from kernels import ops
from kernels.launcher import TensorSlots


@triton.jit
def sgdhd_hypergradient(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    hypergrad_lr = hyper[1]
    return hypergrad_lr * grad * states[0]  # summed over the group: β·⟨g, g_prev⟩


@triton.jit
def sgdhd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr = hyperparameter(hyper[0])  # α, already moved by this step's hypergradient
    return param - lr * grad, (grad,)


def learning_rate_tensor(group, device) -> torch.Tensor:
    """group["lr"] as the 0-d fp32 device tensor that holds α (made so on the first step)."""
    lr = group["lr"]
    if not isinstance(lr, torch.Tensor) or lr.dtype != torch.float32 or lr.device != device or lr.dim() != 0:
        group["lr"] = torch.as_tensor(lr, dtype=torch.float32).reshape(()).to(device)
    return group["lr"]


def sgdhd_prepare(group, params, grads, states, amp=None, shards=None):
    """α += β·⟨g, g_prev⟩ over the group, on the device. With GradScaler: the dot product of the
    unscaled gradient, and α left alone on a skipped step. With FSDP2 shards (``kernels.shards``): the
    shards' partial dot product is summed over the ranks before it moves α, so every rank learns the same α."""
    lr = learning_rate_tensor(group, params[0].device)
    slots = [TensorSlots(p, g, (state["prev_grad"],)) for p, g, state in zip(params, grads, states)]
    hyper = sgdhd_arguments(group)[0]
    groups = shards.groups if shards is not None else (None,) * len(slots)
    whole = [slot for slot, group in zip(slots, groups) if group is None]
    sharded = [i for i, group in enumerate(groups) if group is not None]
    if whole:
        ops.reduce(sgdhd_hypergradient, whole, hyper, (), "SGDHD", lr, amp)
    if sharded:
        partial = torch.zeros((), dtype=torch.float32, device=lr.device)
        ops.reduce(sgdhd_hypergradient, [slots[i] for i in sharded], hyper, (), "SGDHD", partial, amp)
        shards.sum_([partial], sharded[:1])  # Shards.of puts every DTensor of a group on one mesh
        lr.add_(partial)
    return [() for _ in params], [0] * len(params)


def sgdhd_arguments(group):
    return (group["lr"], float(group["hypergrad_lr"])), ()
