r"""Quantized optimizer state (int8, int4) in plain PyTorch: the reference path's twin of
``kernels.quantization``.

A quantized state is two tensors: ``state[name]``, its codes, and ``state[name + "_scale"]``, one
fp32 scale per block of the param's elements in memory order. int8 codes are laid out as the param
(the launcher walks them like any state), blocks of 256; int4 codes are packed two a byte, flat in
the param's memory order (element 2k in the low nibble of byte k), blocks of 128. The scheme follows
the kind its ``State`` declares (``optim.registry``), never the rule; L is the largest code, 127 or
7 signed, 255 or 15 unsigned:

- ``signed`` (momenta, previous gradients): symmetric linear absmax, scale s = max|x| over the block,
  code c = ⌊x·(L/s) + ½⌋ in [−L, L], x̂ = c·(s/L). Linear, not Dettmers et al. 2022's dynamic tree
  map, as torchao's 8-bit first moment: a momentum's values in a block are of one magnitude, and
  round to nearest is exact to twin in the oracle (Li et al. 2023 prefer a dynamic-exponent map at
  4 bits; linear keeps one scheme for both widths).
- ``nonnegative`` (running means of squares: exp_avg_sq, max_exp_avg_sq, square_avg, acc_delta):
  companded, s = max v over the block, c = ⌊√v·(L/√s) + ½⌋ in [1, L] for v > 0 and 0 for v = 0
  (unsigned), v̂ = (c/L)²·s. The square root spends the codes on small values: at 8 bits a v at
  10⁻⁴ of its block's largest still gets code 3 rather than 0, where a linear map would make it 0
  and blow up m/√v: the zero-point problem of Li et al. 2023 ("Memory Efficient Optimizers with
  4-bit States"), who exclude zero from the second moment's map. The square root alone does not
  (a v below s/(4L²), s/900 at 4 bits, would still round to 0, and AdamW int4 diverged to NaN where
  a gradient stopped), so a positive v takes at least code 1, v̂ ≥ s/L², and only v = 0 reads 0.
- ``accumulator`` (Adagrad's sum) and ``multiplicative`` (EGStepSize's positive step sizes): the
  nonnegative map with stochastic rounding, c = ⌊√v·(L/√s) + u⌋, u uniform in [0, 1) (at least 1
  for v > 0, as above: unbiased from code 1 up): a sum grows by 1/t of itself at step t and a step
  size by a factor e^{γ g g'} near 1, soon far below half a code step, which round to nearest would
  drop every time; rounded stochastically the code moves by the increment on average.

Each block's factor L/s (L/√s) is one fp32 division, each element's code one product and a rounding
(how the kernel stays within its ALU budget: no division or correctly rounded square root per
element; the √v is the one the rule's denominator takes); a block whose largest value is below
2^-120 is coded against 2^-120, where L/s would overflow fp32.

Blocks of 256 for int8 (torchao's 8-bit Adam; bitsandbytes uses 2048): one fp32 scale per 256 bytes
of codes, 1/64 of a byte per element, and an outlier spoils only its block; 128 for int4 (Li et
al.'s), as a coarser code needs a smaller block. The kernel's block is a multiple of either, so no
quantization block straddles two programs.

The uniforms come from a counter-based hash (lowbias32, Wellons 2018) of the element's offset, the
state's column and a key: the group's ``quantization_count`` (the seed above bit 32, the steps below),
counted by each step and saved with the param groups, so a resumed run draws the same bits. Integer
arithmetic only, so the kernel and this twin draw the very same bits.
"""
from dataclasses import dataclass

import torch

from fusedoptim.kernels.quantization import code_bytes, scale_count


@dataclass(frozen=True)
class Format:
    """How a quantized state dtype stores its codes."""

    bits: int
    block: int  # elements per fp32 scale
    codes_dtype: torch.dtype  # int8: one code per byte, laid out as the param; uint8: two, packed flat

    def levels(self, kind: str) -> int:
        """The largest code: 127 or 7 for signed kinds (symmetric), 255 or 15 for the others."""
        return 2**self.bits - 1 if UNSIGNED[kind] else 2 ** (self.bits - 1) - 1

    def codes_numel(self, numel: int) -> int:
        """The codes of a state of ``numel`` elements: int8's one each, int4's packed two a byte."""
        return code_bytes(numel, self.bits)

    def scale_numel(self, numel: int) -> int:
        return scale_count(numel, self.block)


# int8 in blocks of 256 (torchao's 8-bit Adam); int4 in blocks of 128, Li et al. 2023's for 4-bit
# states: a coarser code needs a smaller block so that an outlier spoils fewer elements.
FORMATS = {"int8": Format(8, 256, torch.int8), "int4": Format(4, 128, torch.uint8)}
QUANTIZED_DTYPES = tuple(FORMATS)  # values state_dtype takes besides torch's float dtypes
COUNT_KEY = "quantization_count"  # the param group's key: a 0-d int64, (seed << 32) + steps
UNSIGNED = {"signed": False, "nonnegative": True, "accumulator": True, "multiplicative": True}
STOCHASTIC = {"signed": False, "nonnegative": False, "accumulator": True, "multiplicative": True}
_MASK32 = 0xFFFFFFFF
SMALLEST_SCALE = 2.0**-120  # a block of smaller values is coded against it: L/s would overflow fp32


def is_quantized(state_dtype) -> bool:
    return isinstance(state_dtype, str) and state_dtype in QUANTIZED_DTYPES


def format_of(codes: torch.Tensor) -> Format:
    """The format of a tensor of codes, told by its dtype."""
    return next(f for f in FORMATS.values() if f.codes_dtype == codes.dtype)


def storage_dtype(state_dtype, param: torch.Tensor) -> torch.dtype:
    """The dtype a state tensor of ``param`` is stored in: its codes', else the float state dtype."""
    return FORMATS[state_dtype].codes_dtype if is_quantized(state_dtype) else (state_dtype or param.dtype)


def new_codes(param: torch.Tensor, state_dtype: str) -> torch.Tensor:
    """Uninitialised codes for a state of ``param``: int8 laid out as the param; int4 two per byte,
    flat, in the param's memory order (element 2k in the low nibble, 2k + 1 in the high one)."""
    if FORMATS[state_dtype].bits == 8:
        return torch.empty_like(param, dtype=torch.int8)
    return torch.empty(FORMATS[state_dtype].codes_numel(param.numel()), dtype=torch.uint8, device=param.device)


def scale_name(name: str) -> str:
    return name + "_scale"


def scale_numel(numel: int, state_dtype: str = "int8") -> int:
    return FORMATS[state_dtype].scale_numel(numel)


def memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a flat view, in memory order (channels_last, transposed...)."""
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d), reverse=True)
    return tensor.permute(order).reshape(-1)


def _blocks(flat: torch.Tensor, block: int) -> torch.Tensor:
    """[n] → [blocks, block], the tail padded with zeros (which never raise a block's max)."""
    padding = scale_count(flat.numel(), block) * block - flat.numel()
    return torch.nn.functional.pad(flat, (0, padding)).view(-1, block)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """x·constant mod 2³², in int64 without overflow: the constant in 16-bit halves."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (Wellons 2018) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(count: torch.Tensor, column: int, numel: int, first: int = 0) -> torch.Tensor:
    """Uniform [0, 1) fp32 per element offset first..first+numel−1 of state ``column``, keyed by ``count``
    (``first``: the index of element 0 in the whole param, an FSDP2 shard's offset)."""
    low, high = count & _MASK32, (count >> 32) & _MASK32
    key = hash32(hash32((low * 8 + column) & _MASK32) ^ high)
    offsets = torch.arange(first, first + numel, dtype=torch.int64, device=count.device) & _MASK32
    bits = hash32(offsets ^ key)
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def quantize(values: torch.Tensor, kind: str, codes: torch.Tensor, scales: torch.Tensor,
             count=None, column: int = 0, first: int = 0) -> None:
    """fp32 ``values`` into ``codes`` (their format told by their dtype: ``new_codes``) and ``scales``
    (fp32, one per block); a stochastic kind draws its rounding from (count, column) at the elements'
    indices from ``first`` on (an FSDP2 shard's offset in its param), round to nearest without a count.
    Blocks follow the memory order of int8 codes, else of ``values``."""
    fmt = format_of(codes)
    values = values.float()
    if fmt.bits == 8 and values.stride() != codes.stride():  # a checkpoint's layout may differ
        values = torch.empty_like(codes, dtype=torch.float32).copy_(values)
    flat = memory_order(values)
    blocks = _blocks(flat, fmt.block)
    scale = blocks.abs().amax(dim=1, keepdim=True)
    safe = torch.where(scale < SMALLEST_SCALE, SMALLEST_SCALE, scale)
    levels = fmt.levels(kind)
    # One fp32 factor per block and a product per element, the kernel's operations in its order (a
    # tensor over a tensor: torch divides a number by a tensor as the number times its reciprocal).
    levels_per_block = torch.full_like(safe, levels)
    if UNSIGNED[kind]:
        scaled = blocks.sqrt() * (levels_per_block / safe.sqrt())
    else:
        scaled = blocks * (levels_per_block / safe)
    if STOCHASTIC[kind] and count is not None:
        rounded = (scaled + _blocks(uniforms(count, column, flat.numel(), first), fmt.block)).floor()
    else:
        rounded = (scaled + 0.5).floor()
    if UNSIGNED[kind]:
        # No positive value takes code 0 (the zero point); 0 and NaN (an inf over its inf scale, or a
        # NaN block) take 0.
        code = torch.where(scaled > 0, rounded.clamp(1, levels), 0)
    else:
        # |x| ≤ safe: |x·factor| rounds to at most L, no clamp; NaN: an inf over its inf scale, or a NaN block
        code = torch.where(scaled == scaled, rounded, 0)
    code = code.view(-1)[:flat.numel()].to(torch.int32)
    if fmt.bits == 8:
        # Unsigned codes 128..255 are kept in the int8's bits (as −128..−1), as the kernel stores them.
        memory_order(codes).copy_(code.to(torch.uint8).view(torch.int8))
    else:  # two's-complement nibbles, element 2k low, 2k + 1 high
        nibbles = torch.nn.functional.pad(code & 15, (0, code.numel() % 2))
        codes.copy_((nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8))
    scales.copy_(scale.view(-1))


def quantize_constant(value: float, kind: str, codes: torch.Tensor, scales: torch.Tensor, numel: int) -> None:
    """``codes`` and ``scales`` of ``numel`` elements all equal to ``value``: what ``quantize`` makes of
    them, without the param-sized fp32 tensor and the fp32 temporaries of quantizing it (about 20 bytes
    per element of the largest param, at the first step, beside every gradient). Every block's largest
    magnitude is |value| (a tail block's padding is zero), so every block has one scale and every
    element one code: those of two such elements, one int4 byte or two int8 codes."""
    bits = format_of(codes).bits
    pair = torch.full((2,), value, dtype=torch.float32, device=codes.device)
    pair_codes = torch.empty(2 if bits == 8 else 1, dtype=codes.dtype, device=codes.device)
    scale = torch.empty(1, dtype=torch.float32, device=codes.device)
    quantize(pair, kind, pair_codes, scale)
    codes.fill_(pair_codes[0])
    scales.fill_(scale[0])
    if bits == 4 and numel % 2:  # an odd int4 tail: one code, its high nibble zero as quantize pads it
        codes[-1] = pair_codes[0] & 15


def code_values(codes: torch.Tensor, kind: str, numel: int) -> torch.Tensor:
    """The codes of ``numel`` elements as int32, in the param's memory order: int8 codes (their bits
    unsigned for unsigned kinds), or int4 nibbles (two's complement for signed kinds)."""
    if format_of(codes).bits == 8:
        return memory_order(codes).view(torch.uint8 if UNSIGNED[kind] else torch.int8).int()
    nibbles = torch.stack([codes & 15, codes >> 4], dim=1).view(-1)[:numel].int()
    return nibbles if UNSIGNED[kind] else (nibbles ^ 8) - 8


def dequantize(codes: torch.Tensor, scales: torch.Tensor, kind: str, like: torch.Tensor = None) -> torch.Tensor:
    """The fp32 values of ``codes``, laid out as int8 codes, or as ``like`` (the param) for int4."""
    fmt = format_of(codes)
    like = codes if fmt.bits == 8 else like
    flat = code_values(codes, kind, like.numel())
    scale = scales.float().repeat_interleave(fmt.block)[:flat.numel()]
    if UNSIGNED[kind]:
        ratio = flat.float() / fmt.levels(kind)
        values = ratio * ratio * scale
    else:
        values = flat.float() * (scale / fmt.levels(kind))
    result = torch.empty_like(like, dtype=torch.float32)
    memory_order(result).copy_(values)
    return result


def new_count(seed: int, device) -> torch.Tensor:
    return torch.tensor(seed << 32, dtype=torch.int64, device=device)
