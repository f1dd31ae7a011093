"""The sums a rule declares (``Rule.sums``, each an ``optim.rule.Sum``), laid out once per launch plan,
and the per-tensor constants it declares (``Rule.tensor_constants``).

A rule says what it needs summed; this module does the rest, the same way for every rule:

- allocates each sum as fp32 values on the device, in one buffer per device: one value per tensor
  (a sum over the tensor), one per row of a tensor (over each row: an embedding table's), or one for
  the whole param group (over the group);
- zeroes the buffer before each step's reduce launch (one op per device);
- points the reduce launch at them (the trailing scalars of each tensor's row of the pointer table,
  in the declared order, ``kernels.multi_tensor``), so that one launch fills every sum;
- adds up the shards' parts of FSDP2 params over the ranks (one all-reduce per process group); rows
  lie whole in one shard (FSDP2 splits dim 0, and rows run along the last one), so per-row sums need
  none;
- hands them to the update as the same trailing scalars, after the rule's scalar states and constants;
- divides a mean's sums (``Sum.mean``: caution's fraction of agreeing elements) by each whole param's
  element count, after the shards' parts are added up;
- does what the declaration says a sum is for beyond the update: adds a group sum into a group's 0-d
  tensor (``into``: SGDHD's learned lr), or counts the steps where a tensor's sum is positive into a
  scalar state (``counts``: Tiger's NaN skips).

A group sum ``into`` a tensor, with no shards to add up, accumulates straight into that tensor: no
buffer, no zeroing, no add. All of it is a few torch ops per plan and step, never one per tensor, and
no host sync.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from fusedoptim.optim.param_groups import row_length
from fusedoptim.optim.reference import group_tensor


@dataclass
class LaidOut:
    """Per tensor, the fp32 scalars its kernels read (0-d tensors whose addresses go into the pointer
    table: fixed for the plan's life) and its row length (0, or that of the rows its last scalar holds
    one value each for); the number of trailing scalars the reduce launch writes; what runs before the
    reduce and after it."""

    scalars: list
    row_lengths: list
    outputs: int = 0
    clears: list = field(default_factory=list)
    after: Optional[Callable[[Optional[tuple]], None]] = None

    def before(self) -> None:
        for buffer in self.clears:
            buffer.zero_()


def lay_out(rule, group: dict, params: list, states: list, shards, scalar_buffers: dict) -> LaidOut:
    """Each tensor's scalars: its scalar states (all but those that count events), its constants
    (``rule.tensor_constants``), then one per declared sum. ``params``: what the kernels step (local
    shards, as real views), ``states``: their state dicts, ``shards``: ``optim.shards.Shards`` or None,
    ``scalar_buffers``: the packed scalar states, {name: {device: (buffer, indices)}}."""
    inputs = [tuple(state[name] for name in rule.scalar_states if name not in rule.counters) for state in states]
    if rule.tensor_constants is not None:
        inputs = [scalars + constants for scalars, constants in zip(inputs, _constants(rule, group, params, shards))]
    sums = rule.sums_for(group)
    if not sums:
        return LaidOut(scalars=inputs, row_lengths=[0] * len(params))
    sharded = [shards is not None and shards.groups[i] is not None for i in range(len(params))]
    laid_out = LaidOut(scalars=[[None] * len(sums) for _ in params], row_lengths=[0] * len(params),
                       outputs=len(sums))
    steps = []  # what runs after the reduce, in order
    shard_values, shard_indices, means = [], [], []
    for device, indices in _by_device(params).items():
        steps += _lay_out_tensor_sums(sums, group, params, indices, device, laid_out, sharded, shard_values,
                                      shard_indices, scalar_buffers, shards, means)
    if shard_values:
        steps.insert(0, lambda: shards.sum_(shard_values, shard_indices))
    steps += means  # after the shards' parts are added up: a mean over the whole param
    for j, spec in enumerate(sums):
        if spec.over == "group":
            add_up = _lay_out_group_sum(spec, j, group, params, sharded, shards, laid_out)
            steps += [add_up] if add_up is not None else []
    laid_out.scalars = [scalars + tuple(own) for scalars, own in zip(inputs, laid_out.scalars)]

    def after(amp):
        for step in steps:
            step()

    laid_out.after = after
    return laid_out


def _over(spec, group: dict, param: torch.Tensor) -> str:
    return spec.over(group, param) if callable(spec.over) else spec.over


def _lay_out_tensor_sums(sums, group, params, indices, device, laid_out, sharded, shard_values, shard_indices,
                         scalar_buffers, shards, means) -> list:
    """The sums over a tensor or its rows of the tensors ``indices`` on ``device``: one buffer, one
    value per tensor and sum, then each row-summed tensor's rows. Returns what counts events; appends
    to ``means`` what turns a mean's sums into means."""
    n, counts = len(indices), []
    declared = [j for j, spec in enumerate(sums) if spec.over != "group"]
    overs = {i: {j: _over(sums[j], group, params[i]) for j in declared} for i in indices}
    rows = {i: params[i].numel() // row_length(params[i]) for i in indices if "row" in overs[i].values()}
    buffer = torch.zeros(len(declared) * n + sum(rows.values()), dtype=torch.float32, device=device)
    laid_out.clears.append(buffer)
    row_start = len(declared) * n
    for slot, j in enumerate(declared):
        values = buffer[slot * n: (slot + 1) * n]
        for k, i in enumerate(indices):
            if overs[i][j] == "row":
                laid_out.scalars[i][j] = buffer[row_start: row_start + rows[i]]
                laid_out.row_lengths[i] = row_length(params[i])
                row_start += rows[i]
            else:
                laid_out.scalars[i][j] = values[k]
                if sharded[i]:
                    shard_values.append(values[k])
                    shard_indices.append(i)
        if sums[j].mean:
            # an empty tensor's sum is 0, and stays 0: a mean of nothing
            inverse_numels = torch.tensor([1.0 / max(_whole_numel(params, shards, i), 1) for i in indices],
                                          dtype=torch.float32).to(device)
            means.append(lambda values=values, inverse_numels=inverse_numels: values.mul_(inverse_numels))
        if sums[j].counts is not None:
            counter, counted = scalar_buffers[sums[j].counts][device]
            assert counted == indices, "scalar states are packed per device in the params' order"
            counts.append(lambda counter=counter, values=values: counter.add_(values.gt(0)))
    return counts


def _lay_out_group_sum(spec, j, group, params, sharded, shards, laid_out) -> Optional[Callable[[], None]]:
    """A sum over the group: one value, on the first param's device, that every tensor's reduce adds
    into (its group's tensor ``spec.into`` itself, or a value zeroed each step). A sharded tensor's
    part goes to a value of its own, added up over the ranks, then into the total; every tensor's
    scalar then holds the total for the update. Returns what runs after the reduce (None: nothing)."""
    device = params[0].device
    if spec.into is not None:
        total = group_tensor(group, spec.into, device)
    else:
        total = torch.zeros((), dtype=torch.float32, device=device)
        laid_out.clears.append(total)
    if not any(sharded):
        for scalars in laid_out.scalars:
            scalars[j] = total
        return None
    partial = torch.zeros((), dtype=torch.float32, device=device)
    laid_out.clears.append(partial)
    first_sharded = sharded.index(True)
    for i, scalars in enumerate(laid_out.scalars):
        scalars[j] = partial if sharded[i] else total

    def add_up():
        shards.sum_([partial], [first_sharded])  # Shards.of puts every DTensor of a group on one mesh
        total.add_(partial)
        partial.copy_(total)  # what the sharded tensors' update reads: the total

    return add_up


def _by_device(params: list) -> dict:
    """{device: the indices of its params, in order}: as the scalar states are packed."""
    devices: dict = {}
    for i, param in enumerate(params):
        devices.setdefault(param.device, []).append(i)
    return devices


def _whole_numel(params: list, shards, i: int) -> int:
    """The element count of param i's whole tensor: an FSDP2 shard's whole param's."""
    return params[i].numel() if shards is None or shards.groups[i] is None else shards.numels[i]


def _constants(rule, group: dict, params: list, shards) -> list:
    """Each tensor's ``rule.tensor_constants`` as views of one fp32 buffer per device (one copy)."""
    constants = [None] * len(params)
    for device, indices in _by_device(params).items():
        values = torch.tensor([rule.tensor_constants(group, params[i], _whole_numel(params, shards, i))
                               for i in indices], dtype=torch.float32).to(device)
        for k, i in enumerate(indices):
            constants[i] = tuple(values[k].unbind())
    return constants
