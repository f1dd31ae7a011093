"""Params sharded by FSDP2 (``fully_shard``: DTensors split along dim 0): what a step needs of them.

An elementwise rule steps each rank's local shard and needs nothing else. A rule that reduces over a
whole tensor or a whole group (Tiger's RMS(θ) and its NaN verdict on ‖g‖, SGDHD's ⟨g, g_prev⟩) sums
its local partial results over the shards first: ``Shards`` knows, for each param of a step, the
process group of its shards (None for a whole tensor) and its global size.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.placement_types import Shard


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The rank's own part of a DTensor (sharing its storage), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def placed_as(param: torch.Tensor, shard: torch.Tensor) -> torch.Tensor:
    """``shard``, this rank's part of a state laid out as ``param``, as a DTensor of ``param``'s mesh,
    placements and global shape (sharing its storage), or itself where ``param`` is a whole tensor.
    torch.distributed.checkpoint saves and loads a DTensor shard by shard, as torch.optim's states of
    FSDP2 params are; a plain tensor it takes for one replicated on every rank."""
    if not isinstance(param, DTensor):
        return shard
    return DTensor.from_local(shard, param.device_mesh, param.placements, run_check=False, shape=param.shape,
                              stride=param.stride())


def shard_range(param: torch.Tensor) -> Optional[tuple]:
    """An FSDP2 param's local shard as (dim, first index, length) along the dimension it is split on:
    torch.chunk's split (each rank ⌈size/ranks⌉ indices, the last ones fewer or none), as fully_shard
    and DTensor split. None for a whole tensor or another layout (a 2-D mesh, a replicated param)."""
    if not isinstance(param, DTensor) or param.device_mesh.ndim != 1 or not isinstance(param.placements[0], Shard):
        return None
    dim, mesh = param.placements[0].dim, param.device_mesh
    size, length = param.shape[dim], param.to_local().shape[dim]
    per_rank = -(-size // mesh.size())
    first = min(mesh.get_local_rank() * per_rank, size)
    if length != max(0, min(per_rank, size - first)):
        return None  # not torch.chunk's split
    return dim, first, length


def flat_offset(param: torch.Tensor) -> Optional[int]:
    """Where an FSDP2 param's local shard starts in the whole param's elements (row-major): 0 for a
    whole tensor; for a DTensor split along dim 0 (``shard_range``) with a contiguous local shard, its
    first row times the elements of a row. None where the shard is no such range."""
    if not isinstance(param, DTensor):
        return 0
    where = shard_range(param)
    if where is None or where[0] != 0 or not param.to_local().is_contiguous():
        return None
    return where[1] * (param.numel() // param.shape[0] if param.shape[0] else 0)


@dataclass(frozen=True)
class Shards:
    groups: tuple  # per param: the ProcessGroup of its shards, or None for a whole tensor
    numels: tuple  # per param: its global number of elements

    @classmethod
    def of(cls, params: Sequence[torch.Tensor], where: str) -> Optional["Shards"]:
        """None when no param is a DTensor; else each param's group and size. Only shards along one
        dimension of a 1-D mesh (FSDP2's layout) are supported: a replicated or 2-D layout would
        make the sum over ranks count an element more than once."""
        if not any(isinstance(p, DTensor) for p in params):
            return None
        groups = []
        for i, p in enumerate(params):
            if not isinstance(p, DTensor):
                groups.append(None)
                continue
            if p.device_mesh.ndim != 1 or not isinstance(p.placements[0], Shard):
                raise ValueError(f"param {i} of {where} is a DTensor placed {p.placements} on a {p.device_mesh.ndim}-D "
                                 "mesh; the optimizers support shards along one dimension of a 1-D mesh "
                                 "(torch.distributed.fsdp.fully_shard's layout)")
            groups.append(p.device_mesh.get_group())
        if len({group for group in groups if group is not None}) > 1:
            raise ValueError(f"the DTensor params of {where} lie on different meshes; give each mesh's params a "
                             "param group of their own")
        return cls(tuple(groups), tuple(p.numel() for p in params))

    def sum_(self, values: Sequence[torch.Tensor], indices: Sequence[int]) -> None:
        """In place, each ``values[k]`` (a partial result over the local shard of param ``indices[k]``)
        becomes its sum over that param's shards: one all-reduce per process group."""
        by_group: dict = {}
        for value, index in zip(values, indices):
            if self.groups[index] is not None:
                by_group.setdefault(self.groups[index], []).append(value)
        for group, partial in by_group.items():
            total = torch.stack([value.reshape(()) for value in partial])
            dist.all_reduce(total, group=group)
            torch._foreach_copy_(partial, [t.reshape(value.shape) for t, value in zip(total.unbind(), partial)])


__all__ = ["Shards", "flat_offset", "local", "placed_as", "shard_range"]
