"""The reference impl of the matrix shape's engine (``optim.matrix``): the rule's oracle, a per-tensor
loop over plain tensors, run on what each option makes of θ and the momentum, as the registry's
reference runs its oracles (``optim.runtime.Runtime.reference_step``):

- θ: itself, stepped in place; with stochastic rounding a 16-bit θ's fp32 copy, stored back rounded
  stochastically; with split master weights the fp32 master (θ and its residual:
  ``optim.master_weights``), split back after;
- the momentum: itself; or, quantized (int8/int4), its fp32 values laid out as the param, fed fp32
  gradients, quantized back after with the kernel's scheme. The kernel computes B and U in fp32 from
  the codes and g, then stores U in the param's dtype, which the transform reads as the oracle's fp32
  U (Newton–Schulz rounds both to bf16);
- FSDP2 params (DTensors split along dim 0) are stepped whole on every rank: each rank's θ, g and B
  as above, all-gathered, the oracle run on the whole tensors (the same inputs and ops on every rank
  as in one process, so the same bits), and each rank's rows written back. A quantized momentum is
  coded per shard where its rows are whole blocks (the whole tensor's blocks), else kept whole on
  every rank (``optim.saved_states.stepped_whole``), as the fused impl keeps it.
"""
import torch
from torch.distributed.tensor import DTensor

from fusedoptim.optim.master_weights import rebuild_master, split_master
from fusedoptim.optim.quantization import dequantize, quantize, scale_name
from fusedoptim.optim.rounding import stochastic_round
from fusedoptim.optim.saved_states import stepped_whole
from fusedoptim.optim.shards import local, placed_as, shard_range
from fusedoptim.optim.states import MASTER_RESIDUAL

MOMENTUM = "momentum_buffer"
MOMENTUM_KIND = "signed"  # the momentum's quantization scheme, the registry's momenta's


def _whole(param, value, whole=False):
    """``value``, this rank's part of a tensor laid out as ``param`` (``whole``: all of it already), made
    whole (an all-gather) for a DTensor."""
    return placed_as(param, value).full_tensor() if isinstance(param, DTensor) and not whole else value


def _rows(param, value, whole=False):
    """This rank's rows of a whole ``value`` laid out as ``param`` (``whole``: all of them)."""
    if not isinstance(param, DTensor) or whole:
        return value
    _, first, length = shard_range(param)
    return value.narrow(0, first, length)


def _theta(shard, residual, generator):
    """What the oracle steps for θ's local ``shard``: the fp32 master, θ's fp32 copy (stochastic
    rounding of a 16-bit θ), or θ itself."""
    if residual is not None:
        return rebuild_master(shard, local(residual))
    if generator is not None and shard.dtype in (torch.bfloat16, torch.float16):
        return shard.float()
    return shard


def _stored(theta, param, residual, generator):
    """The stepped whole ``theta`` as θ's dtype (and the residual's), before its rows are taken: split,
    rounded stochastically (on the whole tensor, so every rank draws the same bits), or itself."""
    if residual is not None:
        return split_master(theta, param.dtype, local(residual).dtype)
    if theta.dtype != param.dtype:
        return stochastic_round(theta, param.dtype, generator), None
    return theta, None


def reference_step(reference, params, states, group, state_dtype=None, generator=None) -> None:
    """The rule's oracle's step (``reference``) of ``params`` with their ``states`` (module docstring).
    ``generator``: None rounds θ to nearest, as torch; a CPU generator rounds 16-bit θ stochastically
    from its bits. A param's master residual is in its state (``MASTER_RESIDUAL``) where it has one."""
    quantized = state_dtype is not None
    residuals = [state.get(MASTER_RESIDUAL) for state in states]
    wholes = [stepped_whole(p, state_dtype) for p in params]  # momenta kept whole on every rank
    thetas, grads, momenta = [], [], []
    for p, state, residual, whole in zip(params, states, residuals, wholes):
        shard = local(p)
        if quantized:  # laid out as the shard, or as the whole param (int4 codes are flat)
            like = torch.empty(p.shape, dtype=shard.dtype, device=shard.device) if whole else shard
            momentum = dequantize(state[MOMENTUM], state[scale_name(MOMENTUM)], MOMENTUM_KIND, like)
        else:
            momentum = local(state[MOMENTUM])
        grad = local(p.grad).float() if quantized else local(p.grad)
        thetas.append(_whole(p, _theta(shard, residual, generator)))
        grads.append(_whole(p, grad))
        momenta.append({MOMENTUM: _whole(p, momentum, whole)})
    reference(thetas, grads, momenta, group)
    for p, state, residual, theta, momentum, whole in zip(params, states, residuals, thetas, momenta, wholes):
        theta, new_residual = _stored(theta, p, residual, generator)
        if theta is not local(p):  # θ itself was stepped in place
            local(p).copy_(_rows(p, theta))
        if new_residual is not None:
            local(residual).copy_(_rows(p, new_residual))
        momentum = _rows(p, momentum[MOMENTUM], whole)
        if quantized:
            quantize(momentum, MOMENTUM_KIND, state[MOMENTUM], state[scale_name(MOMENTUM)])
        elif momentum is not local(state[MOMENTUM]):
            local(state[MOMENTUM]).copy_(momentum)


__all__ = ["reference_step"]
