"""Training on several processes with torch.distributed: signSGD's majority vote as a DDP hook.

``majority_vote_hook`` replaces DDP's fp32 all-reduce of each gradient bucket: every worker packs the
signs of its bucket into bits on the device (fusedoptim/kernels/majority_vote.py), all-gathers the words (1/32 of
the fp32 bytes), and every worker writes the same vote, the sign of the sum of the workers' signs,
as the gradient. Pair it with optim.SignSGD or optim.Signum (Bernstein et al. 2019, "signSGD with
majority vote is communication efficient and fault tolerant")::

    model = DistributedDataParallel(model)
    state = MajorityVoteState()
    model.register_comm_hook(state, majority_vote_hook)
    optimizer = optim.Signum(model.parameters(), lr=1e-4)
    ...
    state.bytes_sent / state.fp32_bytes   # ≈ 1/32
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from fusedoptim.kernels.majority_vote import majority_vote, pack_signs


# torch 2.13 renamed all_gather_into_tensor (which the GPU machine's torch 2.11 has) to all_gather_single.
_all_gather_into_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class MajorityVoteState:
    """The hook's process group (None: the default group) and what it has counted: the bytes this
    worker put into the all-gathers, and the bytes an fp32 all-reduce of the same buckets would have."""

    process_group: Optional[dist.ProcessGroup] = None
    bytes_sent: int = 0
    fp32_bytes: int = 0


def majority_vote_hook(state: MajorityVoteState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook (``model.register_comm_hook(state, majority_vote_hook)``)."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    gradients = bucket.buffer()
    words = pack_signs(gradients)
    world_size = dist.get_world_size(group)
    gathered = torch.empty(world_size * words.numel(), dtype=torch.int32, device=words.device)
    work = _all_gather_into_tensor(gathered, words, group=group, async_op=True)
    state.bytes_sent += words.numel() * words.element_size()
    state.fp32_bytes += gradients.numel() * 4

    def vote(future):
        return majority_vote(gathered.view(world_size, words.numel()), gradients)

    return work.get_future().then(vote)
