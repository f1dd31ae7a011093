"""Loading a checkpoint (``FusedOptimizer.load_state_dict``): torch.optim's state dict, checked whole
before anything changes, then each state put back as this optimizer keeps it. A checkpoint holds, per
param, the element-wise states (float, or quantized: int8 or int4 codes beside one fp32 scale per
block, ``optim.quantization``), a master residual (``optim.master_weights``), and the scalar states
and counters (the step; Tiger's count, once per optimizer, saved in every param's state). Which
checkpoint loads into which optimizer, and how: docs/mixed-precision.md (codes, scales, residuals),
docs/tiger.md (its step count), docs/distributed.md (shards)."""
import itertools
import warnings

import torch
from torch.distributed.tensor import DTensor

from fusedoptim.optim.shards import local, placed_as
from fusedoptim.optim.states import MASTER_RESIDUAL, check_placements, local_states
from fusedoptim.optim.quantization import (FORMATS, dequantize, format_of, is_quantized, new_codes, quantize, scale_name,
                                scale_numel, storage_dtype)
from fusedoptim.optim.saved_states import (FORMAT_KEY, check_saved_format, saved_format, saved_view, stepped_whole,
                                           to_local)
from fusedoptim.optim.torch_switches import drop_switches
from fusedoptim.optim.validation import check_hyperparameters, check_saved_residual


def saved_checkpoint(optimizer, state_dict: dict) -> dict:
    """torch.optim's ``state_dict`` as this optimizer saves it: each param group says the format of the
    states (``FORMAT_KEY``), and an FSDP2 param's quantized states are DTensors (``saved_view``)."""
    params = itertools.chain.from_iterable(g["params"] for g in optimizer.param_groups)
    saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    names = [spec.name for spec in optimizer.rule.states]
    states = dict(state_dict["state"])
    for saved_id, param in zip(saved_ids, params):
        if saved_id in states:
            states[saved_id] = saved_view(param, states[saved_id], names, optimizer.state_dtype)
    groups = [{**group, FORMAT_KEY: saved_format(optimizer.state_dtype)} for group in state_dict["param_groups"]]
    return {**state_dict, "state": states, "param_groups": groups}


def load_checkpoint(optimizer, state_dict, load_torch_state) -> None:
    """torch.optim's load, checked first (nothing changes if it raises), then each state back in
    this optimizer's state dtype and its param's layout, and the scalar states (the step, also when a
    checkpoint stores it as a Python number) as fp32 tensors on the param's device. A rule with
    step_per_optimizer takes the checkpoint's step as its count (the largest, with a warning, where
    a checkpoint from before that counter holds steps that differ). A master residual is loaded
    into an optimizer of the same master_weight_bits, and dropped by one without: θ, the 16-bit
    param, is then the master. ``load_torch_state`` is the optimizer's ``super().load_state_dict``
    (so that a class between FusedOptimizer and torch.optim.Optimizer still runs), whose pre and
    post hooks thus run after the checks and before the conversions, as they always have."""
    rule = optimizer.rule
    saved_ids = list(itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
    params = list(itertools.chain.from_iterable(g["params"] for g in optimizer.param_groups))
    kinds = {spec.name: spec.kind for spec in rule.states}
    rows_views = {*kinds, *map(scale_name, kinds)}  # may be DTensors of [rows, width] (optim.saved_states)
    for position, (saved_id, param) in enumerate(zip(saved_ids, params)):
        check_placements(rule, state_dict["state"].get(saved_id, {}), param,
                         f"param {position} (in the order of the param groups)", rows_views)
    # What each param's states are laid out as: its shard, or the whole tensor where it is stepped whole.
    targets = [_whole_like(param) if stepped_whole(param, optimizer.state_dtype) else param for param in params]
    # Each param's saved state as its rank keeps it: local parts, quantized states in the rank's form.
    local_saved = [to_local(local_states(state_dict["state"].get(saved_id, {})), kinds) for saved_id in saved_ids]
    legacy = not any(FORMAT_KEY in group for group in state_dict["param_groups"])
    for i, (saved_id, param, target) in enumerate(zip(saved_ids, params, targets)):
        if target is not param and _shard_form(state_dict["state"].get(saved_id, {}), legacy):
            local_saved[i] = _gathered(local_saved[i], param, kinds)
    formats = {group.get(FORMAT_KEY) for group in state_dict["param_groups"]}
    for saved_format_value in formats:
        check_saved_format(rule.name, optimizer.state_dtype, saved_format_value, list(enumerate(local_saved)), kinds)
    for position, (saved, target) in enumerate(zip(local_saved, targets)):
        _check_saved_state(optimizer, saved, local(target), position)
    for index, group in enumerate(state_dict["param_groups"]):  # values read (a load may sync): a saved NaN lr
        group = {**optimizer.defaults, **_int_keyed(group)}
        if rule.learns_lr and "lr" in group:
            # A learned lr (SGDHD's α) goes where its hypergradient takes it, below 0 too: checked for a
            # finite value only, or the optimizer's own checkpoint would be refused.
            group["lr"] = abs(group["lr"])
        check_hyperparameters(rule, group, f"param group {index} of the checkpoint")
    if rule.step_per_optimizer:
        count = _saved_step_count(rule, [state_dict["state"].get(saved_id, {}) for saved_id in saved_ids])
    load_torch_state({**state_dict, "param_groups": [_int_keyed({name: value for name, value in group.items()
                                                                 if name != FORMAT_KEY})
                                                     for group in state_dict["param_groups"]]})
    drop_switches([optimizer.defaults, *optimizer.param_groups])  # torch's __setstate__ puts one in the defaults
    for group in optimizer.param_groups:  # a checkpoint from before a hyperparameter existed: its default
        for name, default in optimizer.defaults.items():
            group.setdefault(name, default)
    if rule.step_per_optimizer:
        optimizer.runtime.load_step_count(count)
    for saved, param, target in zip(local_saved, params, targets):
        state, shard = optimizer.state[param], local(target)
        # An FSDP2 param's states as DTensors (set_optimizer_state_dict's, resharded) or as plain tensors of
        # its shard (a per-rank state_dict): either way, this rank's part, quantized ones in its own form.
        for name, value in saved.items():
            if name in kinds and isinstance(value, torch.Tensor):
                _load_state(optimizer.state_dtype, state, name, kinds[name], value, saved.get(scale_name(name)), target)
            elif name in map(scale_name, kinds):
                if not is_quantized(optimizer.state_dtype):
                    del state[name]  # its codes were dequantized: a float state has no scales
            elif name == "step" and rule.step_per_optimizer:
                state[name] = optimizer.runtime.step_counter(shard.device)
            elif name in rule.scalar_states:
                # copy: the caller's dict may hold the very tensors another optimizer is using
                state[name] = torch.tensor(float(value) if not isinstance(value, torch.Tensor) else value.item(),
                                           dtype=torch.float32, device=shard.device)
            elif name == MASTER_RESIDUAL:
                if optimizer.master_weight_bits is None:
                    del state[name]
                else:
                    state[name] = placed_as(target, torch.empty_like(shard, dtype=value.dtype).copy_(value))
            elif isinstance(value, torch.Tensor):
                state[name] = torch.empty_like(shard, dtype=storage_dtype(optimizer.state_dtype, shard)).copy_(value)
    optimizer.runtime.forget_plans()


def _whole_like(param) -> torch.Tensor:
    """An empty whole tensor of an FSDP2 param's shape and dtype on its device: what the states of a
    param stepped whole (optim.whole) are laid out as."""
    return torch.empty(param.shape, dtype=param.dtype, device=local(param).device)


def _shard_form(saved: dict, legacy: bool) -> bool:
    """Whether the saved states of a param stepped whole hold its shard's part, not the whole tensor's:
    a checkpoint from before such params were stepped whole (no ``FORMAT_KEY``), or one whose states
    are DTensors. Decided alike on every rank, as the gather that follows is a collective."""
    return bool(saved) and (legacy or any(isinstance(value, DTensor) for value in saved.values()))


def _gathered(saved: dict, param, kinds: dict) -> dict:
    """A shard's saved element-wise states (quantized ones dequantized on the shard's blocks) made whole:
    each rank's part gathered (every rank calls this for the same params, in the same order)."""
    shard, result = local(param), dict(saved)
    for name in [*kinds, MASTER_RESIDUAL]:
        value = saved.get(name)
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        if scale_name(name) in saved:
            value = dequantize(value, saved[scale_name(name)].to(shard.device, torch.float32), kinds[name], shard)
            del result[scale_name(name)]
        part = torch.empty_like(shard, dtype=value.dtype).copy_(value.to(shard.device))
        result[name] = DTensor.from_local(part, param.device_mesh, param.placements, run_check=False, shape=param.shape,
                                          stride=param.stride()).full_tensor()
    return result


def _int_keyed(group: dict) -> dict:
    """A saved group whose dict-valued hyperparameters (Tiger's lr_schedule, {step: factor}) have int
    keys again. torch.distributed.checkpoint stores a dict's keys as strings: dcp.load fills a fresh
    optimizer's {0: 1} as {0: 1, '0': f}, f the checkpoint's factor, which the schedule's check would
    refuse as a duplicate step; the string's value is the loaded one, so it wins."""
    def steps(value):
        if not isinstance(value, dict) or not all(isinstance(k, int) or (isinstance(k, str) and k.lstrip("-").isdigit())
                                                  for k in value):
            return value
        ints = {k: v for k, v in value.items() if isinstance(k, int)}
        return {**ints, **{int(k): v for k, v in value.items() if isinstance(k, str)}}
    return {name: steps(value) for name, value in group.items()}


def _load_state(state_dtype, state: dict, name: str, kind: str, value, scales, param) -> None:
    """One element-wise state from a checkpoint (its local shard), in the optimizer's ``state_dtype`` and
    the param's layout: codes and scales of that format as they are (int8 ones where laid out as the
    param), else through their fp32 values (dequantized from a quantized checkpoint, quantized into a
    quantized optimizer). int4 codes are read in the param's memory order, as they were saved. A float
    state is placed as the param (``placed_as``); codes and scales are the shard's plain tensors."""
    quantized, shard = is_quantized(state_dtype), local(param)
    if scales is not None:
        scales, value = scales.to(shard.device, torch.float32), value.to(shard.device)
        if quantized and format_of(value) is FORMATS[state_dtype]:
            codes = new_codes(shard, state_dtype)
            if codes.stride() == value.stride():
                state[name], state[scale_name(name)] = codes.copy_(value), scales.clone().contiguous()
                return
    values = dequantize(value, scales, kind, shard) if scales is not None else value
    if not quantized:
        state[name] = placed_as(param, torch.empty_like(shard, dtype=storage_dtype(state_dtype, shard)).copy_(values))
        return
    values = torch.empty_like(shard, dtype=torch.float32).copy_(values)  # the param's memory order, int4's
    state[name] = new_codes(shard, state_dtype)
    state[scale_name(name)] = torch.empty(scale_numel(shard.numel(), state_dtype), dtype=torch.float32,
                                          device=shard.device)
    quantize(values, kind, state[name], state[scale_name(name)])


def _saved_step_count(rule, saved_states: list) -> float:
    """The optimizer's step count in a checkpoint (0 where no param has state). One saved by this
    counter holds it in every param's state; an older one each param's own count, which the params
    that missed gradients left behind: the largest is the optimizer's, as the original counts."""
    steps = [float(value) if not isinstance(value, torch.Tensor) else value.item()
             for value in (saved["step"] for saved in saved_states if "step" in saved)]
    if len(set(steps)) > 1:
        # stacklevel 4: this function, load_checkpoint, FusedOptimizer.load_state_dict, then its caller
        warnings.warn(f"{rule.name}: the checkpoint's params count different steps ({min(steps):g} to "
                      f"{max(steps):g}), as checkpoints saved before {rule.name} counted its step once per "
                      f"optimizer do; loaded the largest, {max(steps):g}, as the optimizer's step for every "
                      "param, so the params behind take the optimizer's phase of the accumulation cycle and "
                      "the schedule", UserWarning, stacklevel=4)
    return max(steps, default=0.0)


def _check_saved_state(optimizer, saved: dict, param, position: int) -> None:
    """Raises, naming the param and what to do, where its saved state cannot load into ``optimizer``."""
    rule = optimizer.rule
    where = f"the state of param {position} (in the order of the param groups)"
    if saved and "step" in rule.scalar_states and "step" not in saved:
        raise ValueError(f"{rule.name}: {where} has no 'step'; without it the step count (and the "
                         "bias corrections or schedule that follow it) would silently restart. Save it with "
                         "the state, or drop this param's state from the checkpoint to start it afresh")
    check_saved_residual(rule.name, where, saved.get(MASTER_RESIDUAL), optimizer.master_weight_bits)
    scales = {scale_name(spec.name): spec.name for spec in rule.states}
    for name, value in saved.items():
        if name in rule.scalar_states:
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(f"{rule.name}: {where} has {name!r} of {value.numel()} elements, not one")
        elif name in scales:
            codes = saved.get(scales[name])
            coded = isinstance(codes, torch.Tensor) and codes.dtype in (torch.int8, torch.uint8)
            fmt = format_of(codes) if coded else None
            blocks = fmt.scale_numel(param.numel()) if coded else None
            if value.numel() != blocks or (fmt.bits == 4 and codes.numel() != fmt.codes_numel(param.numel())):
                raise ValueError(f"{rule.name}: {where} has {name!r} of {value.numel()} elements beside "
                                 f"codes {scales[name]!r} that are not int8 of the param's shape, or int4 two a "
                                 f"byte, with a scale per block of them: the checkpoint belongs to another "
                                 "model, or was edited")
        elif (isinstance(value, torch.Tensor) and value.dtype in (torch.int8, torch.uint8)
              and scale_name(name) not in saved and name != MASTER_RESIDUAL):  # 24 bits' residual is int8
            raise ValueError(f"{rule.name}: {where} has codes {name!r} ({value.dtype}) without their "
                             f"{scale_name(name)!r}; codes cannot be read without their scales")
        elif isinstance(value, torch.Tensor) and value.dtype != torch.uint8 and value.shape != param.shape:
            raise ValueError(f"{rule.name}: {where} has {name!r} of shape {tuple(value.shape)}, but the "
                             f"param has shape {tuple(param.shape)}: the checkpoint belongs to another model "
                             "or another order of params")
