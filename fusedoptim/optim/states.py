"""A param's optimizer state, as a step finds it and as it makes it: the checks of the states a
param already has (before any tensor changes), and the making of those it lacks, float or quantized
(codes and scales) and the master residual, then the scalar states packed into one buffer per device.
What the states are is the rule's declaration (``optim.registry``: ``State``, ``scalar_states``)."""
import torch
from torch.distributed.tensor import DTensor

from fusedoptim.kernels.master_weights import RESIDUAL_DTYPES
from fusedoptim.optim.shards import local, placed_as
from fusedoptim.optim.quantization import COUNT_KEY, is_quantized, new_codes, new_count, quantize_constant, scale_name, scale_numel
from fusedoptim.optim.rule import FIRST_STEP
from fusedoptim.optim.validation import check_quantized_state, check_scalar_state, check_state

# The state of split master weights (master_weight_bits): θ's residual, int16 or int8, laid out as θ.
MASTER_RESIDUAL = "master_residual"


def check_states(rule, group: dict, param, state: dict, name: str, state_dtype, master_weight_bits) -> None:
    """The states ``param`` already has (from earlier steps or a checkpoint) against it: each of the
    dtype, shape and layout this step would make, so that a wrong one fails before any change. Those
    of an FSDP2 param are checked on its local shard: a DTensor state placed as the param, or a plain
    one of the shard's shape (as states were kept before they were DTensors, and quantized ones are)."""
    check_placements(rule, state, param, name)
    state, param = local_states(state), local(param)
    if state_dtype is not None and param.is_complex():
        raise TypeError(f"{rule.name}: {name} is complex, and its states keep its complex dtype, as "
                        f"torch.optim's; state_dtype={state_dtype!r} cannot hold them. Use "
                        "state_dtype=None for complex params, or optimize torch.view_as_real(param)")
    for state_name in rule.scalar_states:
        if state_name in state:
            check_scalar_state(rule.name, state_name, state[state_name], param, name)
    for state_name in rule.state_names(group):
        if state_name in state and is_quantized(state_dtype):
            check_quantized_state(rule.name, state_name, state, param, state_dtype, name)
        elif state_name in state:
            check_state(rule.name, state_name, state[state_name], param, state_dtype or param.dtype, name)
    if MASTER_RESIDUAL in state and master_weight_bits is not None:
        check_state(rule.name, MASTER_RESIDUAL, state[MASTER_RESIDUAL], param, RESIDUAL_DTYPES[master_weight_bits],
                    name)


def check_placements(rule, state: dict, param, name: str, rows_views=()) -> None:
    """Each DTensor state must be placed as its param, or its local shard would not be the param's; a
    state named in ``rows_views`` may instead be [the param's rows, any width] (a quantized state's
    codes or scales in a checkpoint: ``optim.saved_states``)."""
    for state_name, value in state.items():
        if not isinstance(value, DTensor):
            continue
        shaped = value.shape == param.shape or (state_name in rows_views and isinstance(param, DTensor)
                                                and value.dim() == 2 and param.dim() > 0
                                                and value.shape[0] == param.shape[0])
        if (not isinstance(param, DTensor) or value.device_mesh != param.device_mesh
                or value.placements != param.placements or not shaped):
            placed = (f"a DTensor {tuple(param.shape)} placed {param.placements} on {param.device_mesh}"
                      if isinstance(param, DTensor) else f"a whole tensor {tuple(param.shape)}")
            raise ValueError(f"{rule.name}: state {state_name!r} of {name} is a DTensor {tuple(value.shape)} placed "
                             f"{value.placements} on {value.device_mesh}, but its param is {placed}. The state "
                             "belongs to another sharding: load the checkpoint with torch.distributed.checkpoint's "
                             "set_optimizer_state_dict, which reshards it, or drop this param's state "
                             "(del optimizer.state[p]) to start it afresh")


def local_states(state: dict) -> dict:
    """A param's states as its rank steps them: each DTensor's local shard (sharing its storage)."""
    return {name: local(value) for name, value in state.items()}


def make_quantization_count(group: dict, seed: int, device) -> None:
    """The group's counter that keys the stochastic rounding of codes, saved with the param groups."""
    count = group.get(COUNT_KEY)
    if count is None:
        group[COUNT_KEY] = new_count(seed, device)
    elif count.device != device:
        group[COUNT_KEY] = count.to(device)


def _initial(group: dict, spec) -> float:
    """A state's initial value: a number, or the name of the hyperparameter that holds it."""
    return group[spec.initial] if isinstance(spec.initial, str) else spec.initial


def make_float_states(rule, group: dict, state_dtype, param, state: dict) -> bool:
    """The missing states of ``param`` in the state dtype, placed as ``param`` (an FSDP2 param's are
    DTensors over its local shard, as torch.optim's); whether one is made by the first step."""
    shard = local(param)
    dtype, first = state_dtype or shard.dtype, False
    for spec in rule.states:
        if spec.exists(group) and spec.name not in state:
            if spec.initial == FIRST_STEP:  # the rule's first step writes it without reading it
                state[spec.name], first = placed_as(param, torch.empty_like(shard, dtype=dtype)), True
            else:  # preserve_format: the param's strides, as torch.optim makes its states
                initial = _initial(group, spec)
                if shard.is_complex():  # each of the real view's coordinates starts there (as torch)
                    initial = complex(initial, initial)
                state[spec.name] = placed_as(param, torch.full_like(shard, initial, dtype=dtype))
    return first


def make_quantized_states(rule, group: dict, state_dtype, param, state: dict) -> bool:
    """The missing quantized states of ``param``: codes and scales of their initial values; a state made by
    the first step starts at zero codes and scales (the step writes it without reading it). Whether
    one is made by the first step. An FSDP2 param's are plain tensors of its local shard: a shard's
    blocks and packed bytes are no chunk of a global tensor that a DTensor could describe."""
    first, param = False, local(param)
    for spec in rule.states:
        if spec.exists(group) and spec.name not in state:
            codes = new_codes(param, state_dtype)
            scales = torch.empty(scale_numel(param.numel(), state_dtype), dtype=torch.float32, device=param.device)
            if spec.initial == FIRST_STEP:
                initial, first = 0.0, True
            else:
                initial = _initial(group, spec)
            quantize_constant(initial, spec.kind, codes, scales, param.numel())
            state[spec.name], state[scale_name(spec.name)] = codes, scales
    return first


def make_residual(param, state: dict, master_weight_bits: int) -> None:
    """θ's master residual, zero (θ is the master at the first step), placed as ``param``."""
    if MASTER_RESIDUAL not in state:
        residual = torch.zeros_like(local(param), dtype=RESIDUAL_DTYPES[master_weight_bits])
        state[MASTER_RESIDUAL] = placed_as(param, residual)


def pack_scalar_states(rule, params: list, state_dicts: list) -> dict:
    """Each scalar state (the step) of ``params`` on one device as views of one buffer, so that a step
    counts them all with one op, not one per tensor: {name: {device: (buffer, indices of its params)}}."""
    devices: dict = {}
    for i, param in enumerate(params):
        devices.setdefault(param.device, []).append(i)
    buffers = {}
    for name in rule.scalar_states:
        if name == "step" and rule.step_per_optimizer:
            continue  # already one tensor per device, the optimizer's, which it counts itself
        buffers[name] = {}
        for device, indices in devices.items():
            buffer = torch.stack([state_dicts[i][name].reshape(()) for i in indices])
            for k, i in enumerate(indices):
                state_dicts[i][name] = buffer[k]
            buffers[name][device] = (buffer, indices)
    return buffers
