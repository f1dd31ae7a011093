"""Tiger's host side: the per-tensor scalars and sums its kernels read,
laid out once per launch plan (``optim.plan``), so that a step adds no torch op per tensor.

Per device, one constant buffer holds each tensor's class (``optim.param_groups.PARAM_KINDS``) as
(lr constant, 1/(elements per RMS), decay multiplier, NaN center), and one buffer the sums the reduce
launch writes each step: the NaN count of each gradient, Σθ² of each tensor, and Σθ² of each row of
the embedding tables. A step clears the sums (one op), runs the reduce launch, sums the shards' parts
over the ranks under FSDP2 (one all-reduce), counts the NaN skips (one op) and runs the update.
"""
import torch

from fusedoptim.optim.param_groups import PARAM_KINDS, param_kind, row_length
from fusedoptim.optim.prepared import Prepared


def _constants(param, group, shards, index) -> tuple:
    """(lr constant, 1/(elements per RMS), decay multiplier, NaN center) of one tensor."""
    lr_scale, decay, center = PARAM_KINDS[param_kind(param, group)]
    if lr_scale is None:  # a matrix: RMS over the whole tensor (every shard's part of it)
        return 0.0, 1.0 / max(param.numel() if shards is None else shards.numels[index], 1), decay, center
    if lr_scale == "row":  # an embedding table: RMS of each row (rows lie whole in one FSDP2 shard)
        return 0.0, 1.0 / row_length(param), decay, center
    return lr_scale, 0.0, decay, center


def tiger_prepare(group, params, states, shards, scalar_buffers) -> Prepared:
    """Per tensor its scalars: step, the four constants, and the reduce's two outputs (NaN count, Σθ²
    of the tensor or of each row). ``scalar_buffers``: {name: {device: (buffer, indices)}}, the packed
    scalar states (``nan_skips`` among them) of the tensors ``indices`` on each device."""
    scalars, row_lengths = [None] * len(params), [0] * len(params)
    clears, counts = [], []
    for device, (skips, indices) in scalar_buffers["nan_skips"].items():
        n = len(indices)
        rows = {i: params[i].numel() // row_length(params[i]) for i in indices
                if param_kind(params[i], group) == "embedding" and params[i].numel()}
        constants = torch.tensor([_constants(params[i], group, shards, i) for i in indices],
                                 dtype=torch.float32).to(device)
        sums = torch.zeros(2 * n + sum(rows.values()), dtype=torch.float32, device=device)
        row_start = 2 * n
        for k, i in enumerate(indices):
            sum_of_squares = sums[n + k]
            if i in rows:
                sum_of_squares, row_lengths[i] = sums[row_start: row_start + rows[i]], row_length(params[i])
                row_start += rows[i]
            scalars[i] = (states[i]["step"], *constants[k].unbind(), sums[k], sum_of_squares)
        clears.append(sums)
        counts.append((skips, sums[:n], sums[n: 2 * n], indices))

    def after(amp):
        if shards is not None:  # whole-tensor sums of sharded tensors, summed over their shards
            values, indices = [], []
            for _, nan_counts, squares, device_indices in counts:
                for k, i in enumerate(device_indices):
                    if shards.groups[i] is not None:
                        values += [nan_counts[k], squares[k]]
                        indices += [i, i]
            shards.sum_(values, indices)
        for skips, nan_counts, _, _ in counts:
            skips.add_(nan_counts.gt(0))  # a step GradScaler skips left the counts at 0

    return Prepared(scalars=scalars, row_lengths=row_lengths, outputs=2,
                    before=lambda: [sums.zero_() for sums in clears], after=after)
