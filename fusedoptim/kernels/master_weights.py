"""Split master weights: an fp32 master value kept as the 16-bit param θ plus an integer residual.

The residual is counted in steps of the fp32 bit pattern (units in the last place of fp32, in
sign-magnitude, so that it crosses a power of two without a seam):

    master_bits = bits(fp32(θ)) + residual · 2^RESIDUAL_SHIFT

- ``master_weight_bits=32``: an int16 residual, RESIDUAL_SHIFT = 0. For bf16 the master's bits are
  θ's 16 bits followed by the residual's, exactly (Apex's distributed Adam keeps "bf16 params plus
  16-bit remainders that rebuild fp32 exactly"): θ is the master rounded to nearest, ties away from
  zero, θ_bits = (master_bits + 0x8000) >> 16, so the remainder always lies in [−2^15, 2^15). For fp16
  (10 mantissa bits, 13 fewer than fp32) θ is the master rounded to nearest even and the remainder
  lies within ±2^12 while θ is a normal fp16 number: exact too.
- ``master_weight_bits=24``: an int8 residual in units of 1/256 of θ's ulp (FlashOptim, Gonzalez
  Ortiz et al. 2026: "a bf16 param plus an 8-bit ULP-normalised residual"): the 16-bit remainder
  rounded to its top 8 bits (RESIDUAL_SHIFT = 8 for bf16; 5 for fp16, whose remainder spans 13 bits), clipped to [−128, 127]. The
  rebuilt master is within 1/256 of an ulp of θ of the master: 16 significant bits in bf16, 19 in fp16.

Where θ is not finite the residual is 0 and the master is θ: NaN stays NaN, and a master that rounds
to ±inf in θ's dtype (bf16 above 3.39e38, fp16 from 65520) becomes ±inf, as a plain 16-bit param
would. Below fp16's normal range the remainder grows with the gap between fp16's subnormals and
fp32's ulps and saturates at the residual's bounds: the master is kept exactly down to |master| =
2^-17 (32 bits), then rounds toward θ (never farther from the master than θ itself).
``optim.master_weights`` is the same split in PyTorch, for the reference path.
"""
import torch
import triton
import triton.language as tl

from fusedoptim.kernels.rounding import round_to_nearest

RESIDUAL_DTYPES = {32: torch.int16, 24: torch.int8}  # master_weight_bits -> the residual's dtype
MASTER_BITS = {dtype: bits for bits, dtype in RESIDUAL_DTYPES.items()}  # and back


@triton.jit
def _widen(residual, DTYPE: tl.constexpr, MASTER_BITS: tl.constexpr):
    """The residual in fp32 ulps (int32). The 24-bit one counts steps of 2^RESIDUAL_SHIFT of them."""
    residual = residual.to(tl.int32)
    if MASTER_BITS == 24:
        if DTYPE == tl.bfloat16:
            residual = residual << 8
        else:
            residual = residual << 5
    return residual


@triton.jit
def _narrow(remainder, DTYPE: tl.constexpr, MASTER_BITS: tl.constexpr):
    """The remainder (int32, in fp32 ulps) in the residual's units, to nearest, clipped to its dtype."""
    if MASTER_BITS == 32:
        return tl.minimum(tl.maximum(remainder, -32768), 32767)
    else:
        if DTYPE == tl.bfloat16:
            remainder = (remainder + 128) >> 8  # + half a step, then an arithmetic shift (floor): to nearest
        else:
            remainder = (remainder + 16) >> 5
        return tl.minimum(tl.maximum(remainder, -128), 127)


@triton.jit
def _upcast_bits(param, DTYPE: tl.constexpr):
    """The bits of θ in fp32. bf16's are its own followed by 16 zeros: spelled out, since the
    interpreter's bf16 → fp32 conversion flushes subnormals to zero."""
    if DTYPE == tl.bfloat16:
        return param.to(tl.uint16, bitcast=True).to(tl.uint32) << 16
    else:
        return param.to(tl.float32).to(tl.uint32, bitcast=True)


@triton.jit
def rebuild_master(param, residual, DTYPE: tl.constexpr, MASTER_BITS: tl.constexpr):
    """The fp32 master from θ (in DTYPE, as stored) and its residual (int8 or int16)."""
    upcast_bits = _upcast_bits(param, DTYPE)
    upcast = upcast_bits.to(tl.float32, bitcast=True)
    # Unsigned addition: the residual moves the magnitude, the sign bit stays (wrapping is modulo 2^32).
    master = (upcast_bits + _widen(residual, DTYPE, MASTER_BITS).to(tl.uint32, bitcast=True)).to(tl.float32, bitcast=True)
    return tl.where(tl.abs(upcast) < float("inf"), master, upcast)  # NaN and ±inf: θ itself


@triton.jit
def split_master(master, DTYPE: tl.constexpr, MASTER_BITS: tl.constexpr):
    """(θ in DTYPE, the residual in int16 or int8) of the fp32 master: θ to nearest, the rest in the residual."""
    bits = master.to(tl.uint32, bitcast=True)
    if DTYPE == tl.bfloat16:
        # Ties away from zero (in sign-magnitude, the carry rounds the magnitude up): the remainder
        # then fits int16, which round-to-nearest-even's ties at +2^15 would not.
        param_bits = tl.where(master != master, 0x7FC0, (bits + 0x8000) >> 16)
        param = param_bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        param = round_to_nearest(master, DTYPE)
    upcast_bits = _upcast_bits(param, DTYPE)
    upcast = upcast_bits.to(tl.float32, bitcast=True)
    remainder = (bits - upcast_bits).to(tl.int32, bitcast=True)
    residual = tl.where(tl.abs(upcast) < float("inf"), _narrow(remainder, DTYPE, MASTER_BITS), 0)
    if MASTER_BITS == 32:
        return param, residual.to(tl.int16)
    else:
        return param, residual.to(tl.int8)
