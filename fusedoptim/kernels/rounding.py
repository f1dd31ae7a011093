"""How the fp32 result of a rule becomes its storage dtype: to nearest even, or stochastically.

Stochastic rounding sends x to one of the two storage values around it, the farther one with
probability |x − nearest| / (distance between the two), so that the rounding is unbiased:
E[round(x)] = x. An update smaller than half a unit in the last place, which round-to-nearest
drops every time, then moves the param on average by its exact size: what lets a sign rule (Tiger,
Lion) train with bf16 or fp16 params and momentum and no fp32 master copy.

How, within the ALU budget the memory system leaves (tests/test_alu_budget.py):

- bf16 is the top half of fp32's bits, so adding 16 uniform random bits r to x's fp32 bit pattern and
  truncating the low 16 is stochastic rounding: the magnitude rounds up exactly when r ≥ 2^16 minus
  the dropped bits, with probability (dropped bits) / 2^16 = the residual over the unit. Sign-magnitude
  bits make it symmetric in the sign; ±0, subnormals and the carry into the exponent follow from bit
  patterns that are monotonic in the magnitude. NaN, ±inf and values past the largest finite bf16
  (whose farther neighbour would be inf) take the nearest rounding.
- fp16 is not a truncation of fp32, so its unit s (a power of two: 2^(e−10) for a normal fp16
  exponent e, 2^-24 below fp16's normals) is built from x's exponent bits and
  |q| = ⌊|x|/s + u⌋·s with u = 13 random bits / 2^13: every step is exact in fp32 for x in fp16's
  normal range, which holds 13 bits below the fp16 unit, so the rounding is unbiased there; below
  2^-14 x has more bits than u resolves and the probability is within 2^-12 of a unit of exact.
- The random bits: one Philox4x32 draw per element per launch (tl.philox: 128 bits), keyed by the
  seed tensor (the optimizer's seed above bit 32, the launch count below) and countered by
  (tensor << 40 | element, store // 8): store k of an element (0 = θ, 1.. its states; θ alone where
  the states are quantized, as their codes round with a hash of their own) takes 16 bits of it,
  word (k mod 8) // 2, low half for even k; a ninth store would start a second draw. The
  compiler computes one draw for all the stores that share it (one Philox call per element, not one
  per store), and the same seed gives the same bits whatever the grid. 7 rounds instead of triton's
  default 10: Philox4x32-7 passes TestU01's BigCrush with no failure (Salmon et al. 2011, "Parallel
  random numbers: as easy as 1, 2, 3", SC'11, table 2), and a stochastic rounding needs only
  uniform, independent bits.

``optim.rounding`` is the same rounding in PyTorch, for the reference path, from the same 16 bits
(``optim.rounding.round_with_bits``; a bit-exact twin given the bits).
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _round_to_bfloat16(x):
    """fp32 -> bf16, round to nearest even, in integer arithmetic (the carry into the exponent is
    the rounding up; NaN stays NaN)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


# Whether TRITON_INTERPRET=1 was set when triton built these kernels: they then run on CPU tensors.
INTERPRETED = isinstance(_round_to_bfloat16, InterpretedFunction)
INTERPRETER_ROUNDS_BFLOAT16_BY_HAND = tl.constexpr(INTERPRETED)


@triton.jit
def round_to_nearest(value, DTYPE: tl.constexpr):
    # The interpreter (triton 3.6 to 3.9) truncates fp32 -> bf16 instead of rounding to nearest even
    # as torch and the GPU's cvt.rn do, so under it the rounding is spelled out.
    if INTERPRETER_ROUNDS_BFLOAT16_BY_HAND and DTYPE == tl.bfloat16:
        return _round_to_bfloat16(value)
    else:
        return value.to(DTYPE)


PHILOX_ROUNDS = tl.constexpr(7)  # Philox4x32-7 passes BigCrush (Salmon et al. 2011)
MAX_BFLOAT16 = tl.constexpr(3.3895313892515355e38)  # 0x7F7F: past it the farther neighbour is inf
MAX_FLOAT16 = tl.constexpr(65504.0)


@triton.jit
def _pick(words, SLOT: tl.constexpr):
    """16 bits of a 128-bit draw: word SLOT // 2, its low half for even SLOT."""
    word = words[SLOT // 2]
    if SLOT % 2:
        return word >> 16
    else:
        return word & 0xFFFF


@triton.jit
def _firsts(values, GROUP: tl.constexpr):
    """The first of each group of GROUP (a power of two) consecutive elements: halved by tl.split,
    which only picks registers, where a tl.min of the group costs an int64 compare and select per
    element."""
    for _ in tl.static_range(GROUP.bit_length() - 1):
        values, _ = tl.split(tl.reshape(values, [values.shape[0] // 2, 2]))
    return values


@triton.jit
def random_bits(seed, counter, STORE: tl.constexpr, STORES: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """16 uniform random bits (uint32 below 2^16) for store STORE of STORES of each element of a block
    of consecutive int64 ``counter`` values starting at a multiple of 8 // STORES. Elements share a
    Philox draw by groups of 8 // STORES (16 bits a store), element j of a group taking slots
    j·STORES + STORE; with more than 8 stores each element draws alone, store k from draw k // 8."""
    PER_DRAW: tl.constexpr = max(1, 8 // STORES)  # a draw's 128 bits hold 8 stores of 16
    groups = tl.reshape(counter, [BLOCK_SIZE // PER_DRAW, PER_DRAW])  # a group's elements in one thread
    group = _firsts(counter, PER_DRAW) // PER_DRAW
    zero = tl.zeros_like(group).to(tl.uint32)
    column = tl.arange(0, PER_DRAW)[None, :]
    bits = tl.zeros(groups.shape, tl.uint32)
    for j in tl.static_range(PER_DRAW):
        words = tl.philox(seed, group.to(tl.uint32), (group >> 32).to(tl.uint32),
                          zero + (j * STORES + STORE) // 8, zero, PHILOX_ROUNDS)  # shared by stores
        bits = tl.where(column == j, _pick(words, (j * STORES + STORE) % 8)[:, None], bits)
    return tl.reshape(bits, [BLOCK_SIZE])


@triton.jit
def round_stochastically(value, DTYPE: tl.constexpr, random16):
    """fp32 -> bf16 or fp16, unbiased; ``random16``: uniform uint32 below 2^16 (``random_bits``)."""
    bits = value.to(tl.uint32, bitcast=True)
    magnitude = tl.abs(value)
    if DTYPE == tl.bfloat16:
        truncated = ((bits + random16) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        largest = MAX_BFLOAT16
    else:
        # The fp16 unit at |x| (fp32 exponent field e: 2^(e−127−10), at least 2^-24) and its inverse.
        exponent = tl.maximum((bits >> 23) & 0xFF, 127 - 14)
        unit = ((exponent - 10) << 23).to(tl.float32, bitcast=True)
        inverse = ((254 - exponent + 10) << 23).to(tl.float32, bitcast=True)
        rounded = tl.floor(magnitude * inverse + (random16 >> 3).to(tl.float32) * (1.0 / 8192.0)) * unit
        truncated = (rounded.to(tl.uint32, bitcast=True) | (bits & 0x80000000)).to(tl.float32, bitcast=True)
        truncated = truncated.to(tl.float16)  # exact: a multiple of the unit, within fp16's range
        largest = MAX_FLOAT16
    # NaN, ±inf and values past the largest finite one keep the nearest rounding.
    return tl.where(magnitude <= largest, truncated, round_to_nearest(value, DTYPE))


@triton.jit
def round_to_storage(value, DTYPE: tl.constexpr, STOCHASTIC: tl.constexpr, seed, counter, STORE: tl.constexpr,
                     STORES: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Round to DTYPE; with STOCHASTIC and a 16-bit DTYPE, stochastically with the bits of store STORE
    of STORES of the Philox draws (seed, counter) (``random_bits``)."""
    if STOCHASTIC and DTYPE != tl.float32:
        return round_stochastically(value, DTYPE, random_bits(seed, counter, STORE, STORES, BLOCK_SIZE))
    else:
        return round_to_nearest(value, DTYPE)
