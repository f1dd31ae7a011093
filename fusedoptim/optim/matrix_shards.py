"""Matrix params sharded by FSDP2 (``fully_shard``: DTensors split along dim 0 of a 1-D mesh) for a rule
that transforms each whole matrix (Muon's Newton–Schulz): each matrix is given to one rank of its mesh,
its owner, which receives every rank's rows of the matrix to transform (one ``gather``), transforms it
whole, and sends each rank its rows of the result (one ``scatter``), as Moonlight and Dion do.

The matrices are spread over the ranks, not transformed on every rank: the transform costs
O(rows·cols·min(rows, cols)) and the gather and scatter move what one all-gather would, so each rank
pays for about 1/ranks of the matrices instead of all of them. Owners are chosen from the global
shapes alone (largest cost first, to the least loaded rank), so every rank agrees without a word.

FSDP2 splits dim 0 as torch.chunk does: ⌈rows/ranks⌉ rows to each rank, the last ones fewer or none.
Each rank sends a chunk of ⌈rows/ranks⌉ rows (its own first, then padding); the owner's buffer of
ranks·⌈rows/ranks⌉ rows holds the whole matrix in its first ``rows``.
"""
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from fusedoptim.optim.shards import local, shard_range


def sharded_matrix_problem(params, name: str) -> str:
    """Why ``params`` cannot be stepped as FSDP2 shards of whole matrices, or "": each DTensor among them
    split along dim 0 of a 1-D mesh as torch.chunk splits (FSDP2's layout)."""
    for i, p in enumerate(params):
        if not isinstance(p, DTensor):
            continue
        where = shard_range(p)
        if where is None or where[0] != 0:
            return (f"{name}: param {i} is a DTensor placed {p.placements} on a {p.device_mesh.ndim}-D mesh; {name} "
                    "steps FSDP2's layout only (shards along dim 0 of a 1-D mesh, split as torch.chunk does)")
    return ""


def owners(costs, ranks: int) -> list:
    """The rank that transforms each matrix: the costliest first, each to the least loaded rank (the lowest
    of equals), so that the ranks' shares of the work are about even."""
    loads, chosen = [0] * ranks, [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda index: -costs[index]):
        rank = min(range(ranks), key=lambda rank: (loads[rank], rank))
        chosen[index], loads[rank] = rank, loads[rank] + costs[index]
    return chosen


class ShardedMatrices:
    """The DTensor params of one step: where each rank writes its rows of the matrix to transform
    (``rows_to_send``), the whole matrices this rank owns (``gather``, then ``scatter`` of their results),
    and this rank's rows of each result (``received``). Plain tensors among the params are not its own."""

    def __init__(self, params):
        self.indices = [i for i, p in enumerate(params) if isinstance(p, DTensor)]
        by_mesh: dict = {}
        for i in self.indices:
            by_mesh.setdefault(params[i].device_mesh, []).append(i)
        self.owner, self.group, self.length = {}, {}, {}
        for mesh, members in by_mesh.items():
            costs = [min(params[i].shape) ** 2 * max(params[i].shape) for i in members]  # Newton–Schulz's work
            for i, owner in zip(members, owners(costs, mesh.size())):
                self.owner[i], self.group[i] = owner, mesh.get_group()
        self.ranks = {i: params[i].device_mesh.size() for i in self.indices}
        self.rank = {i: params[i].device_mesh.get_local_rank() for i in self.indices}
        self.sent, self.whole, self.back = {}, {}, {}
        for i in self.indices:
            p = params[i]
            rows, cols = p.shape
            per_rank = -(-rows // self.ranks[i])
            self.length[i] = local(p).shape[0]
            self.sent[i] = torch.empty((per_rank, cols), dtype=p.dtype, device=local(p).device)
            self.back[i] = torch.empty_like(self.sent[i])
            if self.owns(i):
                self.whole[i] = torch.empty((per_rank * self.ranks[i], cols), dtype=p.dtype, device=local(p).device)
        self.rows = {i: params[i].shape[0] for i in self.indices}

    def __contains__(self, index: int) -> bool:
        return index in self.owner

    def owns(self, index: int) -> bool:
        """Whether this rank transforms param ``index``'s whole matrix (every plain tensor: yes)."""
        return index not in self.owner or self.owner[index] == self.rank[index]

    def rows_to_send(self, index: int) -> torch.Tensor:
        """Where this rank writes its rows of param ``index``'s matrix to transform."""
        return self.sent[index][:self.length[index]]

    def received(self, index: int) -> torch.Tensor:
        """This rank's rows of param ``index``'s transformed matrix, after ``scatter``."""
        return self.back[index][:self.length[index]]

    def gather(self, wholes: dict) -> None:
        """Every rank's rows of each matrix to its owner, which copies them into ``wholes[index]``."""
        self._exchange(dist.gather, "group_dst", self.sent)
        for i in self.indices:
            if self.owns(i):
                wholes[i].copy_(self.whole[i][:self.rows[i]])

    def scatter(self, wholes: dict) -> None:
        """Each owner's transformed ``wholes[index]`` cut into the ranks' rows, each sent to its rank."""
        for i in self.indices:
            if self.owns(i):
                self.whole[i][:self.rows[i]].copy_(wholes[i])
        self._exchange(dist.scatter, "group_src", self.back)

    def _exchange(self, collective, root: str, mine: dict) -> None:
        """``collective`` (gather or scatter) for every matrix, rooted at its owner, all in flight at once;
        every rank issues them in the same order (the params')."""
        works = []
        for i in self.indices:
            chunks = list(self.whole[i].view(self.ranks[i], *mine[i].shape).unbind()) if self.owns(i) else None
            works.append(collective(mine[i], chunks, group=self.group[i], async_op=True, **{root: self.owner[i]}))
        for work in works:
            work.wait()


__all__ = ["ShardedMatrices", "owners", "sharded_matrix_problem"]
