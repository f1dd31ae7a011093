"""Quantized state in registers: codes and one fp32 scale per block, dequantized after the load and
requantized before the store, inside the fused update.

The schemes, their papers and why each kind of state takes its own are in ``optim.quantization``'s
docstring, the plain-PyTorch twin that the reference path runs: the same block layout, the same fp32
operations in the same order, the same hash for the random bits of stochastic rounding. BITS = 8:
one int8 code per element, walked like the param; BITS = 4: two per byte, element 2k in the low
nibble of byte k of the param's memory order (read and written once per pair, the pair's elements
being neighbours in one thread's registers). What each choice saves, in SASS instructions per element
within the ALU budget (tests/test_alu_budget.py), is written beside it.
"""
import triton
import triton.language as tl


def code_bytes(numel: int, bits: int) -> int:
    """The bytes of a state's codes: one per element at 8 bits, two elements a byte at 4 (the last
    byte's high nibble unused for an odd count)."""
    return triton.cdiv(numel * bits, 8)


def scale_count(numel: int, block: int) -> int:
    """The fp32 scales of a state: one per block of ``block`` elements, the last block maybe partial."""
    return triton.cdiv(numel, block)


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
def _levels(UNSIGNED: tl.constexpr, BITS: tl.constexpr):
    """The largest code: 2^BITS − 1 unsigned, 2^(BITS−1) − 1 signed (symmetric)."""
    if UNSIGNED:
        return (1 << BITS) - 1.0
    else:
        return (1 << (BITS - 1)) - 1.0


@triton.jit
def _load_codes(codes_ptr, offsets, numel, UNSIGNED: tl.constexpr, BITS: tl.constexpr, MASKED: tl.constexpr):
    """Each element's code as fp32: the int8 (its bits unsigned for unsigned kinds), or its nibble."""
    if BITS == 8:
        if MASKED:
            codes = tl.load(codes_ptr + offsets, mask=offsets < numel, other=0)
        else:
            codes = tl.load(codes_ptr + offsets)
        if UNSIGNED:
            codes = codes.to(tl.uint8, bitcast=True)
        return codes.to(tl.float32)
    else:
        # One load per pair, split into its nibbles in registers (was a load per nibble: 1 SASS per element).
        even, _ = tl.split(tl.reshape(offsets, [offsets.shape[0] // 2, 2]))
        if MASKED:
            byte = tl.load(codes_ptr + even // 2, mask=even < numel, other=0)
        else:
            byte = tl.load(codes_ptr + even // 2)
        byte = byte.to(tl.int32)
        nibble = tl.reshape(tl.join(byte & 15, byte >> 4), [offsets.shape[0]])
        if not UNSIGNED:
            nibble = (nibble ^ 8) - 8  # two's complement
        return nibble.to(tl.float32)


@triton.jit
def load_dequantized(codes_ptr, scale_ptr, offsets, numel, UNSIGNED: tl.constexpr, BITS: tl.constexpr,
                     QUANT_BLOCK: tl.constexpr, MASKED: tl.constexpr):
    """The fp32 values of a block of codes; each element's scale gathered from its quantization block."""
    codes = _load_codes(codes_ptr, offsets, numel, UNSIGNED, BITS, MASKED)
    if MASKED:
        scale = tl.load(scale_ptr + offsets // QUANT_BLOCK, mask=offsets < numel, other=0.0)
    else:
        scale = tl.load(scale_ptr + offsets // QUANT_BLOCK)
    if UNSIGNED:
        ratio = codes / _levels(UNSIGNED, BITS)
        return ratio * ratio * scale
    else:
        return codes * (scale / _levels(UNSIGNED, BITS))


@triton.jit
def _store_codes(codes_ptr, offsets, numel, code, BITS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 MASKED: tl.constexpr):
    """int8 codes one per element; int4 codes packed by pairs (a masked tail's codes are 0)."""
    if BITS == 8:
        codes = code.to(tl.int32).to(tl.int8)  # 128..255 of unsigned kinds in the int8's bits
        if MASKED:
            tl.store(codes_ptr + offsets, codes, mask=offsets < numel)
        else:
            tl.store(codes_ptr + offsets, codes)
    else:
        # A pair's two elements are neighbours in one thread's registers: split apart, where a sum and
        # an int64 min of its offsets per pair went through shared memory (with the scale's index and
        # the NaN max below, AdamW int4's 157.8 SASS per element were 113.1 without them).
        low, high = tl.split(tl.reshape(code.to(tl.int32) & 15, [BLOCK_SIZE // 2, 2]))
        even, _ = tl.split(tl.reshape(offsets, [BLOCK_SIZE // 2, 2]))
        pairs = (low | (high << 4)).to(tl.uint8)
        if MASKED:
            tl.store(codes_ptr + even // 2, pairs, mask=even < numel)
        else:
            tl.store(codes_ptr + even // 2, pairs)


# A block whose largest |x| is below 2^-120 is coded against 2^-120 (its values read smaller than
# they were): L/s overflows fp32 below L/3.4e38 = 3.7e-37 (2^-121.1 at L = 127), and a block of zeros
# would code 0·inf.
SMALLEST_SCALE = tl.constexpr(2.0**-120)


@triton.jit
def _absmax(value, BLOCKS: tl.constexpr, QUANT_BLOCK: tl.constexpr):
    """Each quantization block's max |x|, NaN where the block holds a NaN (as torch's amax in the
    oracle; tl.max skips NaN): the max of |x|'s bit patterns, whose order as integers is their order
    as floats, with NaN's above inf's. One integer reduction, a single REDUX where a warp holds the
    block, instead of a float max and a second one for the NaNs."""
    bits = value.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.max(tl.reshape(bits, [BLOCKS, QUANT_BLOCK]), axis=1).to(tl.float32, bitcast=True)


@triton.jit
def store_quantized(codes_ptr, scale_ptr, start, offsets, numel, value, UNSIGNED: tl.constexpr,
                    STOCHASTIC: tl.constexpr, key, first, BITS: tl.constexpr, QUANT_BLOCK: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr):
    """Each quantization block's absmax (the masked tail counts as 0), then the codes against it;
    ``start`` is ``offsets``' first, a multiple of QUANT_BLOCK; ``first``, the index of element 0 in the
    whole param (an FSDP2 shard's offset), which keys the stochastic draws."""
    BLOCKS: tl.constexpr = BLOCK_SIZE // QUANT_BLOCK
    if MASKED:
        value = tl.where(offsets < numel, value, 0.0)
    scale = _absmax(value, BLOCKS, QUANT_BLOCK)
    safe = tl.where(scale < SMALLEST_SCALE, SMALLEST_SCALE, scale)  # NaN stays NaN: its block codes 0
    levels = _levels(UNSIGNED, BITS)
    # One correctly rounded division per block and a product per element, where a division per
    # element (and a sqrt_rn per element of the companded kinds) cost AdamW int4 18.5 SASS per element.
    # √v is tl.sqrt's, the rule's own denominator's (Adam, Adagrad): the compiler computes it once.
    if UNSIGNED:
        factor = tl.div_rn(levels, tl.sqrt_rn(safe))
        magnitude = tl.sqrt(value)
    else:
        factor = tl.div_rn(levels, safe)
        magnitude = value
    scaled = magnitude * tl.reshape(tl.broadcast_to(factor[:, None], [BLOCKS, QUANT_BLOCK]), [BLOCK_SIZE])
    if STOCHASTIC:
        rounded = tl.floor(scaled + _uniform(key, first + offsets))
    else:
        rounded = tl.floor(scaled + 0.5)
    if UNSIGNED:
        # No positive value takes code 0 (the zero point: docstring of optim.quantization); 0 and NaN take 0.
        code = tl.where(scaled > 0.0, tl.minimum(tl.maximum(rounded, 1.0), levels), 0.0)
    else:
        # |x| ≤ safe, so |x·factor| ≤ L·(1 + 2⁻²²), whose nearest is ±L: no clamp (2 SASS per element).
        tl.static_assert(not STOCHASTIC, "signed codes round to nearest: a uniform could carry them past ±L")
        code = tl.where(scaled == scaled, rounded, 0.0)  # NaN: an inf over its inf scale, or a NaN block
    _store_codes(codes_ptr, offsets, numel, code, BITS, BLOCK_SIZE, MASKED)
    # Each block's index is arithmetic: an int64 tl.min of its offsets went through shared memory.
    block = start // QUANT_BLOCK + tl.arange(0, BLOCKS)
    if MASKED:
        tl.store(scale_ptr + block, scale, mask=block * QUANT_BLOCK < numel)
    else:
        tl.store(scale_ptr + block, scale)
