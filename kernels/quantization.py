"""int8 state in registers: codes and one fp32 scale per block, dequantized after the load and
requantized before the store, inside the fused update.

The schemes, their papers and why each kind of state takes its own are in ``optim.quantization``'s
docstring, the plain-PyTorch twin that the reference path runs: the same block layout, the same fp32
operations in the same order, the same hash for the random bits of stochastic rounding.
"""
import triton
import triton.language as tl

SIGNED_LEVELS: tl.constexpr = tl.constexpr(127)
UNSIGNED_LEVELS: tl.constexpr = tl.constexpr(255)


@triton.jit
def _hash32(x):
    """lowbias32 (Wellons 2018) on uint32: wrapping multiplies, logical shifts."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def random_key(count, column):
    """The key of one state column's draws this step; ``count`` is the group's int64 counter."""
    low = count.to(tl.uint32)
    high = (count >> 32).to(tl.uint32)
    return _hash32(_hash32(low * 8 + column) ^ high)


@triton.jit
def _uniform(key, offsets):
    bits = _hash32(offsets.to(tl.uint32) ^ key)
    return (bits >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def load_dequantized(codes_ptr, scale_ptr, offsets, numel, UNSIGNED: tl.constexpr, QUANT_BLOCK: tl.constexpr,
                     MASKED: tl.constexpr):
    """The fp32 values of a block of codes; each element's scale gathered from its quantization block."""
    if MASKED:
        codes = tl.load(codes_ptr + offsets, mask=offsets < numel, other=0)
        scale = tl.load(scale_ptr + offsets // QUANT_BLOCK, mask=offsets < numel, other=0.0)
    else:
        codes = tl.load(codes_ptr + offsets)
        scale = tl.load(scale_ptr + offsets // QUANT_BLOCK)
    if UNSIGNED:
        ratio = codes.to(tl.uint8, bitcast=True).to(tl.float32) / UNSIGNED_LEVELS
        return ratio * ratio * scale
    else:
        return codes.to(tl.float32) * (scale / SIGNED_LEVELS)


@triton.jit
def store_quantized(codes_ptr, scale_ptr, offsets, numel, value, UNSIGNED: tl.constexpr, STOCHASTIC: tl.constexpr,
                    key, QUANT_BLOCK: tl.constexpr, BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr):
    """Each quantization block's absmax (the masked tail counts as 0), then the codes against it."""
    BLOCKS: tl.constexpr = BLOCK_SIZE // QUANT_BLOCK
    value = tl.where(offsets < numel, value, 0.0)
    scale = tl.max(tl.reshape(tl.abs(value), [BLOCKS, QUANT_BLOCK]), axis=1)
    # A NaN makes its block's scale NaN, as torch's amax in the oracle (tl.max skips it): the block
    # then reads NaN, as θ does where a NaN gradient lands.
    has_nan = tl.max(tl.reshape((value != value).to(tl.int32), [BLOCKS, QUANT_BLOCK]), axis=1) > 0
    scale = tl.where(has_nan, float("nan"), scale)
    first = tl.min(tl.reshape(offsets, [BLOCKS, QUANT_BLOCK]), axis=1)  # each block's first element
    per_element = tl.reshape(tl.broadcast_to(scale[:, None], [BLOCKS, QUANT_BLOCK]), [BLOCK_SIZE])
    safe = tl.where(per_element > 0.0, per_element, 1.0)
    if UNSIGNED:
        scaled = tl.sqrt_rn(value / safe) * UNSIGNED_LEVELS
        low, high = 0.0, 255.0
    else:
        scaled = value / (safe / SIGNED_LEVELS)
        low, high = -127.0, 127.0
    scaled = tl.where((per_element > 0.0) & (scaled == scaled), scaled, 0.0)  # a 0 scale, and inf over an inf one
    if STOCHASTIC:
        scaled = scaled + _uniform(key, offsets)
    else:
        scaled = scaled + 0.5
    code = tl.minimum(tl.maximum(tl.floor(scaled), low), high)
    if UNSIGNED:
        codes = code.to(tl.uint8).to(tl.int8, bitcast=True)  # 128..255 in the int8's bits
    else:
        codes = code.to(tl.int8)
    if MASKED:
        tl.store(codes_ptr + offsets, codes, mask=offsets < numel)
        tl.store(scale_ptr + first // QUANT_BLOCK, scale, mask=first < numel)
    else:
        tl.store(codes_ptr + offsets, codes)
        tl.store(scale_ptr + first // QUANT_BLOCK, scale)
