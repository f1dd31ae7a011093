"""Quantized states of FSDP2 params as a checkpoint holds them: chunks of global tensors, so that
torch.distributed.checkpoint (DCP) saves each rank's part, puts them back together and reshards them.

A rank keeps its shard's codes and one fp32 scale per block of the shard (``optim.quantization``),
plain tensors that no DTensor describes. ``state_dict()`` shows each as a DTensor placed as the param,
in one of two forms, chosen by the param's shape alone (so that every mesh makes the same choice):

- **rows**: where a row of the param (its elements per index of dim 0, the dimension FSDP2 shards)
  is a whole number of quantization blocks (256 elements at int8, 128 at int4: most weight matrices),
  every shard starts on a block and the blocks are those of the whole tensor, on any mesh. int8 codes
  are shaped as the param, int4 codes as [rows, row/2] bytes, the scales as [rows, row/block]: each
  rank's part is its rows of global tensors, which DCP reassembles and reshards exactly.
- **elements**: otherwise (1-D params, rows of 7 elements), the blocks start where the shard starts,
  and depend on the mesh. Codes are shown one per element shaped as the param (int4 ones as a byte
  each, 0..15), and each element's scale beside it (4 bytes an element: such params are the small ones,
  biases and norms). A load on the same blocks takes the codes and scales back as they were; on other
  blocks (another mesh), each element's value is read from its code and scale and quantized again.

Loading takes either form, and a rank's plain codes and scales (per-rank checkpoints), back into the
rank's plain codes and scales (``to_local``). The state dict's param groups say which state format
the optimizer kept (``FORMAT_KEY``): DCP reads a checkpoint into the destination's dtypes, so int8
codes loaded by an int4 or float optimizer would otherwise be read, silently, as its own.
"""
from typing import Optional

import torch
from torch.distributed.tensor import DTensor

from fusedoptim.optim.quantization import (FORMATS, UNSIGNED, Format, format_of, memory_order, quantize,
                                           scale_name)
from fusedoptim.optim.shards import flat_offset, local, placed_as

FORMAT_KEY = "state_format"  # a saved param group's: "int8", "int4", or None (float states)


def row_length(param: torch.Tensor, fmt: Format) -> Optional[int]:
    """The elements of a row of ``param`` where they are a whole number of ``fmt``'s blocks and its
    shard a range of rows (the "rows" form), else None."""
    if param.dim() == 0 or param.shape[0] == 0 or flat_offset(param) is None:
        return None
    length = param.numel() // param.shape[0]
    return length if length and length % fmt.block == 0 else None


def _rows(param: DTensor, part: torch.Tensor) -> DTensor:
    """``part`` ([local rows, width]) as this rank's rows of a [rows, width] DTensor placed as ``param``."""
    width = part.shape[1]
    return DTensor.from_local(part, param.device_mesh, param.placements, run_check=False,
                              shape=(param.shape[0], width), stride=(width, 1))


def _per_element(values: torch.Tensor, shard: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Flat ``values`` (one per element, in memory order) laid out as ``shard``."""
    result = torch.empty_like(shard, dtype=dtype)
    memory_order(result).copy_(values)
    return result


def _nibbles(codes: torch.Tensor, numel: int) -> torch.Tensor:
    """int4 codes, two a byte, as one byte per element (its nibble's bits), flat."""
    return torch.stack([codes & 15, codes >> 4], dim=1).view(-1)[:numel]


def _pack(nibbles: torch.Tensor) -> torch.Tensor:
    """One byte per element (a nibble each), flat, packed two a byte: element 2k low, 2k + 1 high."""
    nibbles = torch.nn.functional.pad(nibbles.to(torch.uint8) & 15, (0, nibbles.numel() % 2))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def saved_view(param: torch.Tensor, state: dict, names, state_dtype) -> dict:
    """``state`` (a param's, as the optimizer keeps it) with each quantized state ``names`` shown as
    DTensors placed as ``param``, in the form its shape takes; ``state`` itself where ``param`` is a
    whole tensor or the states are floats. New dicts and views: the optimizer's own are not changed."""
    if not isinstance(param, DTensor) or state_dtype not in FORMATS:
        return state
    fmt, shard, view = FORMATS[state_dtype], local(param), dict(state)
    length = row_length(param, fmt)
    for name in names:
        if name not in state or scale_name(name) not in state:
            continue
        codes, scales = local(state[name]), local(state[scale_name(name)])
        if length is not None:
            rows = shard.shape[0]
            view[name] = placed_as(param, codes) if fmt.bits == 8 else _rows(param, codes.view(rows, length // 2))
            view[scale_name(name)] = _rows(param, scales.view(rows, length // fmt.block))
        else:
            n = shard.numel()
            unpacked = codes if fmt.bits == 8 else _per_element(_nibbles(codes, n), shard, torch.uint8)
            view[name] = placed_as(param, unpacked)
            view[scale_name(name)] = placed_as(param, _per_element(scales.repeat_interleave(fmt.block)[:n], shard,
                                                                   torch.float32))
    return view


def to_local(saved: dict, shard: torch.Tensor, kinds: dict) -> dict:
    """A param's saved state, each DTensor already its local part (``local_states``), with every
    quantized state in the rank's own form: int8 codes shaped as ``shard`` or int4 codes two a byte,
    flat, and one scale per block of the shard. The "rows" form is the rank's rows as they are; the
    "elements" form is taken as it is where each of the shard's blocks holds one scale (the same
    blocks), else read as values and quantized on the shard's blocks (round to nearest)."""
    result = dict(saved)
    n = shard.numel()
    for name, kind in kinds.items():
        codes, scales = saved.get(name), saved.get(scale_name(name))
        if not isinstance(codes, torch.Tensor) or not isinstance(scales, torch.Tensor) \
                or codes.dtype not in (torch.int8, torch.uint8):
            continue
        fmt = format_of(codes)
        if n <= 1 or scales.numel() != n or codes.numel() != n:  # the rank's own form, or rows
            result[name] = codes if fmt.bits == 8 else codes.reshape(-1)
            result[scale_name(name)] = scales.reshape(-1)
            continue
        # One code and one scale per element, in the shard's memory order.
        flat_codes = memory_order(codes) if codes.shape == shard.shape else codes.reshape(-1)
        flat_scales = (memory_order(scales) if scales.shape == shard.shape else scales.reshape(-1)).float()
        firsts = flat_scales[::fmt.block]
        if torch.equal(flat_scales, firsts.repeat_interleave(fmt.block)[:n]):
            packed = flat_codes.to(torch.int8) if fmt.bits == 8 else _pack(flat_codes)
            result[name] = _per_element(packed, shard, torch.int8) if fmt.bits == 8 else packed
            result[scale_name(name)] = firsts.clone()
            continue
        values = _per_element(_element_values(flat_codes, flat_scales, kind, fmt), shard, torch.float32)
        result[name] = torch.empty_like(shard, dtype=torch.int8) if fmt.bits == 8 \
            else torch.empty(fmt.codes_numel(n), dtype=torch.uint8, device=shard.device)
        result[scale_name(name)] = torch.empty(fmt.scale_numel(n), dtype=torch.float32, device=shard.device)
        quantize(values, kind, result[name], result[scale_name(name)])
    return result


def _element_values(codes: torch.Tensor, scales: torch.Tensor, kind: str, fmt: Format) -> torch.Tensor:
    """fp32 values of flat codes (one per element) each beside its own scale: ``dequantize``'s
    operations, in its order."""
    if fmt.bits == 8:
        code = codes.view(torch.uint8 if UNSIGNED[kind] else torch.int8).int()
    else:
        code = codes.int() & 15
        code = code if UNSIGNED[kind] else (code ^ 8) - 8
    levels = fmt.levels(kind)
    if UNSIGNED[kind]:
        ratio = code.float() / levels
        return ratio * ratio * scales
    return code.float() * (scales / levels)


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


__all__ = ["FORMAT_KEY", "check_saved_format", "row_length", "saved_format", "saved_view", "to_local"]
