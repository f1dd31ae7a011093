"""The tuner: every candidate configuration timed on scratch tensors, never on a caller's. It sits
above the library it tunes (it steps optimizers), and writes what fusedoptim/autotune/, below the kernels, reads.

A fused step is in place: timing it runs the update once per call. Triton's ``@triton.autotune`` on an
in-place kernel applies the update once per configuration to the caller's tensors (lion-pytorch
needed ``restore_value`` for exactly that), so tuning here happens on an optimizer of its own: fresh
random tensors of each size bucket (``tune``), or copies of a caller's params, gradients and state
(``tune_optimizer``), which the timed steps may change as they like.
"""
import copy
import functools
from typing import Callable, Optional

import torch
import triton

from fusedoptim import optim
from fusedoptim.optim.base import OPTIONS
from fusedoptim.autotune import default_config, forced_config, size_bucket
from fusedoptim.autotune.space import LaunchConfig, search_space
from fusedoptim.autotune.table import entry

Timer = Callable[[Callable[[], object]], float]  # runs the step as often as it likes, returns ms


def do_bench_timer(warmup_ms: float = 5, rep_ms: float = 20) -> Timer:
    """triton.testing.do_bench's median, in ms. Its first call compiles the candidate, outside the timing."""
    return functools.partial(triton.testing.do_bench, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def time_candidates(step: Callable[[], object], candidates: list[LaunchConfig], timer: Timer,
                    progress=None, dtype: Optional[torch.dtype] = None) -> list[tuple[LaunchConfig, float]]:
    """(config, ms) of ``step`` run with each candidate forced on every launch (of ``dtype``, if given)."""
    timings = []
    for config in candidates:
        with forced_config(config, dtype):
            timings.append((config, float(timer(step))))
        if progress is not None:
            progress.update(1)
    return timings


def _best(rule_name, dtype, bucket, timings, default: LaunchConfig, default_ms: Optional[float] = None) -> dict:
    config, ms = min(timings, key=lambda pair: pair[1])
    measured_default = dict(timings).get(default, default_ms)
    return entry(rule_name, dtype, bucket, config, ms, measured_default)


def scratch_optimizer(rule, dtype: torch.dtype, numel: int, device: torch.device, seed: int = 0):
    """An optimizer of ``rule`` (its default hyperparameters) over one fresh tensor of ``numel``
    elements, with its state made by one step, so every timed step is a steady-state step."""
    generator = torch.Generator(device=device).manual_seed(seed)
    param = torch.randn(numel, generator=generator, device=device).to(dtype)
    if rule.nonnegative_params:
        param = param.abs()
    param.grad = torch.randn(numel, generator=generator, device=device).to(dtype)
    optimizer = getattr(optim, rule.name)([param], **rule.defaults, impl="triton")
    optimizer.step()
    return optimizer


def tune(rule, dtype: torch.dtype, bucket: int, device: torch.device, timer: Timer,
         candidates: Optional[list[LaunchConfig]] = None, progress=None) -> dict:
    """The fastest candidate for ``rule`` on one tensor of 2^bucket elements: a table entry."""
    optimizer = scratch_optimizer(rule, dtype, 2**bucket, device)
    candidates = candidates if candidates is not None else search_space(dtype)
    timings = time_candidates(optimizer.step, candidates, timer, progress)
    default = default_config(dtype)
    default_ms = None if default in dict(timings) else time_candidates(optimizer.step, [default], timer)[0][1]
    return _best(rule.name, dtype, bucket, timings, default, default_ms)


def scratch_copy(optimizer):
    """An optimizer of the same class over copies of ``optimizer``'s params, gradients, state and
    hyperparameters (lr tensors included: SGDHD learns its lr in place), fused, without gradient release."""
    params = [[p.detach().clone() for p in group["params"]] for group in optimizer.param_groups]
    for copies, group in zip(params, optimizer.param_groups):
        for param, original in zip(copies, group["params"]):
            param.grad = None if original.grad is None else original.grad.clone()
    state_dict = copy.deepcopy(optimizer.state_dict())
    groups = [{**{k: v for k, v in saved.items() if k != "params"}, "params": copies}
              for saved, copies in zip(state_dict["param_groups"], params)]
    options = {name: getattr(optimizer, name) for name in OPTIONS if name not in ("impl", "gradient_release")}
    scratch = type(optimizer)(groups, impl="triton", **options)
    scratch.load_state_dict(state_dict)
    return scratch


def tune_optimizer(optimizer, timer: Timer, candidates: Optional[list[LaunchConfig]] = None) -> list[dict]:
    """Table entries for the sizes and dtypes of a caller's optimizer, timed on a scratch copy of it:
    the caller's params, gradients and state are read once and never written."""
    scratch = scratch_copy(optimizer)
    params = [p for group in scratch.param_groups for p in group["params"] if p.grad is not None]
    entries = []
    for dtype in dict.fromkeys(p.dtype for p in params):
        bucket = size_bucket(max(p.numel() for p in params if p.dtype == dtype))
        timings = time_candidates(scratch.step, candidates if candidates is not None else search_space(dtype), timer,
                                  dtype=dtype)
        entries.append(_best(scratch.rule.name, dtype, bucket, timings, default_config(dtype)))
    return entries
