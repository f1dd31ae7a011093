"""Tiger (Su Jianlin 2023, bojone/tiger): the fused core update.

Equations in ``optim.reference.tiger``'s docstring. Per tensor the kernel receives its step counter,
its lr multiplier (1/2 for bias and normalization tensors, RMS(θ) for the others), its weight-decay
multiplier (0 or 1) and the norm of its gradient, which is NaN exactly when the gradient has a NaN:
the NaN guard needs a verdict on the whole tensor before any element is updated.
"""
import math

import torch
import triton
import triton.language as tl

from kernels.elementwise import hyperparameter, sign


@triton.jit
def tiger_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta, weight_decay, grad_accum_steps, shrink_ratio = hyper
    lr = hyperparameter(lr)
    step, lr_scale, decay_scale, grad_norm = scalars
    m = states[0]
    micro_step = step - 1.0  # t counts micro-steps from 0; the step counter already counts this one
    # Accumulation gating: the first micro-step of a cycle decays m, the last one moves θ.
    cycle_position = micro_step - grad_accum_steps * tl.floor(micro_step / grad_accum_steps)
    b1 = tl.where(cycle_position == 0.0, beta, 1.0)
    b2 = (1.0 - beta) / grad_accum_steps
    eta = tl.where(cycle_position == grad_accum_steps - 1.0, lr * lr_scale, 0.0)
    new_m = b1 * m + b2 * grad
    new_param = param - eta * (sign(new_m) + decay_scale * weight_decay * param)
    grad_has_nan = grad_norm != grad_norm
    shrunk = param * shrink_ratio  # (θ - c)·s + c with the center c = 0
    return tl.where(grad_has_nan, shrunk, new_param), (tl.where(grad_has_nan, m, new_m),)


def tiger_arguments(group):
    hyper = (group["lr"], float(group["beta"]), float(group["weight_decay"]),
             float(group["grad_accum_steps"]), float(group["shrink_ratio"]))
    return hyper, ()


def is_bias_or_normalization(param: torch.Tensor) -> bool:
    """Tiger's default class: every tensor with ndim <= 1 is a bias or normalization tensor."""
    return param.ndim <= 1


_constants: dict = {}


def _constant(value: float, device: torch.device) -> torch.Tensor:
    if (value, device) not in _constants:
        _constants[value, device] = torch.tensor(value, dtype=torch.float32, device=device)
    return _constants[value, device]


def tiger_prepare(group, params, grads, states):
    """Per tensor: (step, lr multiplier, weight-decay multiplier, gradient norm), all on the device.

    Two multi-tensor norms (one over the matrices' θ, one over every gradient) replace any host
    sync: the RMS costs one extra read of θ, the NaN verdict one extra read of g.
    """
    matrices = [p for p in params if not is_bias_or_normalization(p)]
    rms = torch._foreach_norm(matrices, 2, dtype=torch.float32) if matrices else []
    if rms:
        torch._foreach_mul_(rms, [1.0 / math.sqrt(max(p.numel(), 1)) for p in matrices])
    rms = iter(rms)
    grad_norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    scalars = []
    for p, state, grad_norm in zip(params, states, grad_norms):
        if is_bias_or_normalization(p):
            lr_scale, decay_scale = _constant(0.5, p.device), _constant(0.0, p.device)
        else:
            lr_scale, decay_scale = next(rms), _constant(1.0, p.device)
        scalars.append((state["step"], lr_scale, decay_scale, grad_norm))
    return scalars
