"""Quantized states of FSDP2 params as a checkpoint holds them: chunks of global tensors, so that
torch.distributed.checkpoint (DCP) saves each rank's part, puts them back together and reshards them.

A rank keeps its shard's codes and one fp32 scale per block of the shard (``optim.quantization``),
plain tensors that no DTensor describes: DCP would take them for replicated tensors, save one rank's
and load it on every rank. Where a row of the param (its elements per index of dim 0, the dimension
FSDP2 splits) is a whole number of quantization blocks (256 elements at int8, 128 at int4: most
weight matrices), every shard starts on a block, and the blocks are those of the whole tensor on any
mesh: ``state_dict()`` shows int8 codes as a DTensor placed as the param, int4 codes as [rows, row/2]
bytes and the scales as [rows, row/block], each rank's part its rows of the whole tensor's codes and
scales, which DCP reassembles and reshards exactly. The other params (biases, norms, rows of 7) are
stepped whole on every rank (``optim.whole``): their states are whole plain tensors, the same on
every rank, which DCP saves once and loads on any mesh.

The state dict's param groups say which state format the optimizer kept (``FORMAT_KEY``): DCP reads a
checkpoint into the destination's dtypes, so int8 codes loaded by a float optimizer would otherwise be
read, silently, as its values.
"""
from typing import Optional

import torch
from torch.distributed.tensor import DTensor

from fusedoptim.optim.quantization import FORMATS, Format, scale_name
from fusedoptim.optim.shards import flat_offset, local, placed_as, shard_range

FORMAT_KEY = "state_format"  # a saved param group's: "int8", "int4", or None (float states)


def row_length(param: torch.Tensor, fmt: Format) -> Optional[int]:
    """The elements of a row of ``param`` where they are a whole number of ``fmt``'s blocks and its
    shard a range of rows (the "rows" form), else None."""
    if param.dim() == 0 or param.shape[0] == 0 or flat_offset(param) is None:
        return None
    length = param.numel() // param.shape[0]
    return length if length and length % fmt.block == 0 else None


def stepped_whole(param: torch.Tensor, state_dtype) -> bool:
    """Whether ``param``, an FSDP2 param with quantized states whose shards do not start on blocks of
    the whole tensor (rows of no whole number of blocks, or split along another dimension), is stepped
    whole on every rank (``optim.whole``): its blocks would otherwise start where its shards start,
    and its codes depend on the mesh."""
    return (isinstance(param, DTensor) and state_dtype in FORMATS and shard_range(param) is not None
            and param.numel() > 0 and row_length(param, FORMATS[state_dtype]) is None)


def _rows(param: DTensor, part: torch.Tensor) -> DTensor:
    """``part`` ([local rows, width]) as this rank's rows of a [rows, width] DTensor placed as ``param``."""
    width = part.shape[1]
    return DTensor.from_local(part, param.device_mesh, param.placements, run_check=False,
                              shape=(param.shape[0], width), stride=(width, 1))


def saved_view(param: torch.Tensor, state: dict, names, state_dtype) -> dict:
    """``state`` (a param's, as the optimizer keeps it) with each quantized state ``names`` of an FSDP2
    param whose rows are whole blocks shown as DTensors placed as ``param``; ``state`` itself for
    others (whole tensors, params stepped whole, float states). New dicts and views: the optimizer's
    own are not changed."""
    fmt = FORMATS.get(state_dtype) if isinstance(state_dtype, str) else None
    length = row_length(param, fmt) if fmt is not None and isinstance(param, DTensor) else None
    if length is None:
        return state
    shard, view = local(param), dict(state)
    rows = shard.shape[0]
    for name in names:
        if name in state and scale_name(name) in state:
            codes, scales = local(state[name]), local(state[scale_name(name)])
            view[name] = placed_as(param, codes) if fmt.bits == 8 else _rows(param, codes.view(rows, length // 2))
            view[scale_name(name)] = _rows(param, scales.view(rows, length // fmt.block))
    return view


def to_local(saved: dict, kinds: dict) -> dict:
    """A param's saved state, each DTensor already its local part (``local_states``), with every
    quantized state in the rank's own form: int4 codes and scales of the rows form flat again."""
    result = dict(saved)
    for name in kinds:
        codes, scales = saved.get(name), saved.get(scale_name(name))
        if isinstance(codes, torch.Tensor) and isinstance(scales, torch.Tensor) and codes.dtype == torch.uint8:
            result[name] = codes.reshape(-1)
        if isinstance(codes, torch.Tensor) and isinstance(scales, torch.Tensor):
            result[scale_name(name)] = scales.reshape(-1)
    return result


def saved_format(state_dtype) -> Optional[str]:
    """What ``FORMAT_KEY`` says of an optimizer's states."""
    return state_dtype if state_dtype in FORMATS else None


def check_saved_format(rule_name: str, state_dtype, saved_format_value, saved_states: list, names) -> None:
    """Raises where a checkpoint's states are not in the format its param groups say they were saved
    in: codes read as another dtype (DCP reads into the destination optimizer's dtypes)."""
    if saved_format_value not in FORMATS:
        return
    fmt = FORMATS[saved_format_value]
    for position, saved in saved_states:
        for name in names:
            value = saved.get(name)
            if not isinstance(value, torch.Tensor):
                continue
            if value.dtype != fmt.codes_dtype or scale_name(name) not in saved:
                got = f"{value.dtype}" + ("" if scale_name(name) in saved else f" without {scale_name(name)!r}")
                raise ValueError(
                    f"{rule_name}: the checkpoint's param groups say its states were saved as "
                    f"{saved_format_value} codes ({fmt.codes_dtype} with their scales), but state {name!r} of "
                    f"param {position} (in the order of the param groups) is {got}: it was read into the "
                    f"dtypes of an optimizer with state_dtype={state_dtype!r} (torch.distributed.checkpoint "
                    "reads a checkpoint into the destination's dtypes), so its codes would be taken for "
                    f"something else. Load it into an optimizer with state_dtype={saved_format_value!r}; to "
                    "change the state dtype, then load that optimizer's state_dict() into the new one")


__all__ = ["FORMAT_KEY", "check_saved_format", "row_length", "saved_format", "saved_view", "stepped_whole", "to_local"]
