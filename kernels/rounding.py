"""How the fp32 result of a rule becomes its storage dtype: to nearest even, or stochastically.

Stochastic rounding sends x to one of the two storage values around it, the farther one with
probability |x − nearest| / (distance between the two), so that the rounding is unbiased:
E[round(x)] = x. An update smaller than half a unit in the last place, which round-to-nearest
drops every time, then moves the param on average by its exact size: what lets a sign rule (Tiger,
Lion) train with bf16 or fp16 params and momentum and no fp32 master copy.

The random bits come from Triton's Philox generator keyed by (seed, launch count) and countered by
(tensor, column, element): the same seed gives the same bits, run after run, whatever the grid.
``optim.rounding.stochastic_round`` is the same rounding in PyTorch, for the reference path.
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


@triton.jit
def round_stochastically(value, DTYPE: tl.constexpr, random_bits):
    """fp32 -> a 16-bit float (bf16 or fp16), unbiased; ``random_bits`` are uniform 32-bit integers."""
    nearest = round_to_nearest(value, DTYPE)
    nearest_value = nearest.to(tl.float32)
    residual = value - nearest_value
    # The storage value on the residual's side: in sign-magnitude bits, one unit away from zero when
    # the residual has the value's sign, one unit toward zero otherwise; from ±0, the smallest
    # subnormal of the residual's sign.
    bits = nearest.to(tl.int16, bitcast=True)
    away_from_zero = (residual > 0) == (nearest_value > 0)
    neighbour_bits = tl.where(away_from_zero, bits + 1, bits - 1)
    smallest = tl.where(residual > 0, 1, -32767).to(tl.int16)  # 0x0001 or 0x8001
    neighbour_bits = tl.where(nearest_value == 0.0, smallest, neighbour_bits.to(tl.int16))
    neighbour = neighbour_bits.to(DTYPE, bitcast=True)
    distance = tl.abs(neighbour.to(tl.float32) - nearest_value)
    # Where the residual is 0 the neighbour is not needed; a subnormal neighbour flushed to zero must
    # not turn that into 0/0.
    probability = tl.abs(residual) / tl.where(distance > 0.0, distance, 1.0)
    uniform = (random_bits.to(tl.uint32, bitcast=True) >> 8).to(tl.float32) * (1.0 / 16777216.0)  # [0, 1)
    # Exact values, NaN and values past the largest finite one keep the nearest rounding.
    exact_or_not_finite = (residual == 0.0) | (residual != residual) | (tl.abs(residual) == float("inf"))
    return tl.where(exact_or_not_finite | (uniform >= probability), nearest, neighbour)


@triton.jit
def round_to_storage(value, DTYPE: tl.constexpr, STOCHASTIC: tl.constexpr, seed, counter):
    """Round to DTYPE; with STOCHASTIC and a 16-bit DTYPE, stochastically with Philox(seed, counter)."""
    if STOCHASTIC and DTYPE != tl.float32:
        return round_stochastically(value, DTYPE, tl.randint(seed, counter))
    else:
        return round_to_nearest(value, DTYPE)
