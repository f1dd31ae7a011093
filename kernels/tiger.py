"""Tiger (Su Jianlin 2023, bojone/tiger): the fused update, with all that the original has.

Equations in ``optim.reference.tiger``'s docstring. Per tensor the kernel receives its step counter
(micro-steps), its weight-decay multiplier (0 or 1), its NaN-guard center (0 or 1), the norm of its
gradient (NaN exactly when the gradient has a NaN: the guard needs a verdict on the whole tensor
before any element moves) and, last, its lr multiplier: 1/2, RMS(θ), or one RMS per row for an
embedding table (the launcher's per-row scalar). The piecewise-linear schedule is a compile-time
table evaluated from the step counter: the lr never syncs to the host and a new step never compiles.
"""
import math

import torch
import triton
import triton.language as tl

from kernels.elementwise import hyperparameter, sign
from kernels.shards import global_norms, global_numel
from optim.schedule import schedule_points


@triton.jit
def piecewise_linear(step, SCHEDULE: tl.constexpr):
    """``optim.schedule.piecewise_linear`` on the device. SCHEDULE: its points flattened, (step0,
    multiplier0, step1, multiplier1, ...), as triton 3.6 takes no nested tuples as constexpr."""
    multiplier = SCHEDULE[len(SCHEDULE) - 1] + 0.0 * step  # constant after the last point
    for i in tl.static_range(0, len(SCHEDULE) - 2, 2):
        step_begin, begin, step_end, end = SCHEDULE[i], SCHEDULE[i + 1], SCHEDULE[i + 2], SCHEDULE[i + 3]
        between = (step >= step_begin) & (step < step_end)
        slope = (end - begin) / (step_end - step_begin)
        multiplier = tl.where(between, begin + slope * (step - step_begin), multiplier)
    return multiplier


@triton.jit
def tiger_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta, weight_decay, grad_accum_steps, shrink_ratio = hyper
    lr = hyperparameter(lr)
    step, decay_scale, center, grad_norm, lr_scale = scalars
    m = states[0]
    micro_step = step - 1.0  # t counts micro-steps from 0; the step counter already counts this one
    # Accumulation gating: the first micro-step of a cycle decays m, the last one moves θ.
    cycle_position = micro_step - grad_accum_steps * tl.floor(micro_step / grad_accum_steps)
    b1 = tl.where(cycle_position == 0.0, beta, 1.0)
    b2 = (1.0 - beta) / grad_accum_steps
    eta = tl.where(cycle_position == grad_accum_steps - 1.0, lr * piecewise_linear(micro_step, FLAGS), 0.0)
    new_m = b1 * m + b2 * grad
    new_param = param - eta * lr_scale * (sign(new_m) + decay_scale * weight_decay * param)
    grad_has_nan = grad_norm != grad_norm
    shrunk = (param - center) * shrink_ratio + center  # NaN guard: toward the initialisation center
    return tl.where(grad_has_nan, shrunk, new_param), (tl.where(grad_has_nan, m, new_m),)


def tiger_arguments(group):
    hyper = (group["lr"], float(group["beta"]), float(group["weight_decay"]),
             float(group["grad_accum_steps"]), float(group["shrink_ratio"]))
    return hyper, sum(schedule_points(group["lr_schedule"]), ())  # FLAGS: the schedule, flattened


# Tiger's classes of tensors: (lr multiplier, weight-decay multiplier, NaN-guard center). The lr
# multiplier None is RMS(θ) over the whole tensor, "row" one RMS(θ) per row of the last dimension.
PARAM_KINDS = {
    "bias": (0.5, 0.0, 0.0),
    "normalization": (0.5, 0.0, 1.0),  # a normalization layer's weight (gamma), initialised at 1
    "matrix": (None, 1.0, 0.0),
    "embedding": ("row", 1.0, 0.0),
}


def param_kind(param: torch.Tensor, group) -> str:
    """The group's param_kind; "auto" makes every tensor with ndim <= 1 a bias, the others matrices."""
    kind = group["param_kind"]
    if kind == "auto":
        return "bias" if param.ndim <= 1 else "matrix"
    return kind


def row_length(param: torch.Tensor) -> int:
    """An embedding table's rows run along its last dimension."""
    return param.shape[-1] if param.ndim and param.shape[-1] else 1


_constants: dict = {}


def _constant(value: float, device: torch.device) -> torch.Tensor:
    if (value, device) not in _constants:
        _constants[value, device] = torch.tensor(value, dtype=torch.float32, device=device)
    return _constants[value, device]


def tiger_prepare(group, params, grads, states, amp=None, shards=None):
    """Per tensor: its scalars (step, decay, center, grad norm, lr multiplier) and its row length.

    All on the device, with no host sync: one multi-tensor norm over the matrices' θ (their RMS, an
    extra read of θ), one per embedding table (per-row RMS), one over every gradient (the NaN
    verdict, an extra read of g), and one add that counts each tensor's NaN skips. With FSDP2 shards
    (``kernels.shards``), the whole tensors' norms are summed over the shards; an embedding's rows lie
    whole in one shard.
    """
    kinds = [param_kind(p, group) for p in params]
    matrix_indices = [i for i, kind in enumerate(kinds) if kind == "matrix"]
    matrix_norms = global_norms([params[i] for i in matrix_indices], shards, matrix_indices)
    rms = iter(torch._foreach_mul(matrix_norms, [1.0 / math.sqrt(max(global_numel(params[i], shards, i), 1))
                                                 for i in matrix_indices]) if matrix_indices else ())
    grad_norms = global_norms(grads, shards, range(len(grads)))
    nan_verdicts = torch.stack(grad_norms).isnan().float()
    if amp is not None:  # a step GradScaler skips counts no NaN skip either (a scaled NaN is still NaN)
        nan_verdicts = nan_verdicts * amp[1].to(nan_verdicts.device).eq(0)
    nan_verdicts = nan_verdicts.unbind()
    torch._foreach_add_([state["nan_skips"] for state in states], nan_verdicts)
    scalars, row_lengths = [], []
    for p, kind, state, grad_norm in zip(params, kinds, states, grad_norms):
        lr_scale, decay_scale, center = PARAM_KINDS[kind]
        if kind == "matrix":
            lr_scale = next(rms)
        elif kind == "embedding" and p.numel():
            lr_scale = torch.linalg.vector_norm(p.reshape(-1, row_length(p)), dim=-1, dtype=torch.float32)
            lr_scale /= math.sqrt(max(row_length(p), 1))
        else:
            lr_scale = _constant(lr_scale if isinstance(lr_scale, float) else 1.0, p.device)
        scalars.append((state["step"], _constant(decay_scale, p.device), _constant(center, p.device),
                        grad_norm, lr_scale))
        row_lengths.append(row_length(p) if kind == "embedding" and p.numel() else 0)
    return scalars, row_lengths
