"""FSDP2 params stepped whole on every rank: those with quantized states whose rows are no whole number
of quantization blocks (biases, norms, a row of 7), or that are split along another dimension than
the first (``saved_states.stepped_whole``).

A block of such a param would straddle two shards, and its scale needs both ranks' values: blocks
that start where a shard starts make codes that depend on the mesh. Instead every rank gathers the
param and its gradient whole (an all-gather each, as DDP's all-reduce moves them), steps the whole
tensor with whole states (the same on every rank: the same inputs, the same kernel), and writes its
own shard back. The codes and scales are then those of one process on any mesh, a sum over the
tensor (Tiger's RMS(θ)) is taken whole, and the states are plain tensors that
torch.distributed.checkpoint saves once and loads on any mesh. The price: the state, and the
step's work, on every rank. Such params are the small ones in a model; a large one (a vocabulary of
50,257 as a row) is better transposed, or padded to a row of whole blocks.
"""
import torch

from fusedoptim.optim.saved_states import stepped_whole
from fusedoptim.optim.shards import local, shard_range


class WholeParams:
    """Of a step's params, those stepped whole: a whole buffer for each one's θ and gradient, gathered
    before the step, and each rank's shard of θ written back after it."""

    def __init__(self, params, state_dtype):
        self.indices = [i for i, p in enumerate(params) if stepped_whole(p, state_dtype)]
        self.params = [params[i] for i in self.indices]
        self.thetas = [torch.empty(p.shape, dtype=p.dtype, device=local(p).device) for p in self.params]
        self.grads = [torch.empty_like(theta) for theta in self.thetas]
        self.ranges = [shard_range(p) for p in self.params]  # (dim, first index, length) of each shard

    def __bool__(self):
        return bool(self.indices)

    def substitute(self, values: list, replacements: list) -> list:
        """``values`` with each whole-stepped param's entry replaced."""
        values = list(values)
        for i, replacement in zip(self.indices, replacements):
            values[i] = replacement
        return values

    def stepped(self, params: list) -> list:
        """What each param's states are laid out as: its whole buffer, or the param itself."""
        return self.substitute(params, self.thetas)

    def grads_match(self, grads: list) -> bool:
        """Whether each whole-stepped param's gradient (its local part) is laid out as its shard."""
        return all(grads[i].shape == local(p).shape and grads[i].dtype == p.dtype and grads[i].is_contiguous()
                   for i, p in zip(self.indices, self.params))

    @torch.no_grad()
    def gather(self) -> None:
        for p, theta, grad in zip(self.params, self.thetas, self.grads):
            theta.copy_(p.full_tensor())
            grad.copy_(p.grad.full_tensor())

    @torch.no_grad()
    def scatter(self) -> None:
        for p, theta, (dim, first, length) in zip(self.params, self.thetas, self.ranges):
            local(p).copy_(theta.narrow(dim, first, length))


__all__ = ["WholeParams"]
