"""SGDHD's host side: where its reduce launch sums β·⟨g, g_prev⟩ (into α, group["lr"])."""
import torch

from fusedoptim.optim.prepared import Prepared
from fusedoptim.optim.reference.sgdhd import learning_rate_tensor


def sgdhd_prepare(group, params, states, shards, scalar_buffers) -> Prepared:
    """α becomes the 0-d fp32 device tensor in group["lr"], and the reduce adds each tensor's part of
    the dot product straight into it. With FSDP2 shards (``optim.shards``) the shards' partial dot
    product goes to a scratch value first, is summed over the ranks, then moves α, so every rank
    learns the same α. GradScaler: the reduce sums the unscaled gradients, and nothing on a skipped step."""
    lr = learning_rate_tensor(group, params[0].device)
    if shards is None:
        return Prepared(scalars=[(lr,)] * len(params), row_lengths=[0] * len(params), outputs=1)
    partial = torch.zeros((), dtype=torch.float32, device=lr.device)
    sharded = [i for i, process_group in enumerate(shards.groups) if process_group is not None]

    def after(amp):
        shards.sum_([partial], sharded[:1])  # Shards.of puts every DTensor of a group on one mesh
        lr.add_(partial)

    return Prepared(scalars=[(partial,) if shards.groups[i] is not None else (lr,) for i in range(len(params))],
                    row_lengths=[0] * len(params), outputs=1, before=partial.zero_, after=after)
