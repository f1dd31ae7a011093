"""Split master weights in PyTorch: the reference path's twin of ``kernels.master_weights``, whose
docstring has the split (θ to nearest, the rest of the fp32 master in an int16 or int8 residual).
Bit operations run on int64 copies of the fp32 bit patterns, where nothing overflows."""
import torch

from fusedoptim.kernels.master_weights import MASTER_BITS
PARAM_DTYPES = (torch.bfloat16, torch.float16)  # the params a residual can complete
# The 24-bit residual's unit, 2^shift fp32 ulps: 1/256 of θ's ulp (θ has 7 mantissa bits in bf16, 10 in fp16).
RESIDUAL_SHIFTS = {(torch.bfloat16, 24): 8, (torch.float16, 24): 5, (torch.bfloat16, 32): 0, (torch.float16, 32): 0}
_LIMITS = {torch.int16: (-32768, 32767), torch.int8: (-128, 127)}
_WORD = 1 << 32


def _bits(value: torch.Tensor) -> torch.Tensor:
    """An fp32 tensor's bit patterns as unsigned values in int64."""
    return value.view(torch.int32).long() & (_WORD - 1)


def _float(bits: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit patterns (int64) as fp32, wrapped modulo 2^32 as the kernel's uint32."""
    bits = bits & (_WORD - 1)
    return torch.where(bits >= _WORD // 2, bits - _WORD, bits).int().view(torch.float32)


def rebuild_master(param: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The fp32 master of a bf16 or fp16 param and its residual; where θ is NaN or ±inf, θ."""
    shift = RESIDUAL_SHIFTS[param.dtype, MASTER_BITS[residual.dtype]]
    upcast = param.float()
    master = _float(_bits(upcast) + (residual.long() << shift))
    return torch.where(upcast.isfinite(), master, upcast)


def split_master(master: torch.Tensor, dtype: torch.dtype, residual_dtype: torch.dtype):
    """(θ in ``dtype``, the residual in ``residual_dtype``) of an fp32 master."""
    bits = _bits(master)
    if dtype == torch.bfloat16:  # ties away from zero, so that the remainder fits int16 (see the kernel)
        param_bits = torch.where(master.isnan(), 0x7FC0, (bits + 0x8000) >> 16)
        param = torch.where(param_bits >= 1 << 15, param_bits - (1 << 16), param_bits).to(torch.int16).view(dtype)
    else:
        param = master.to(dtype)  # to nearest even
    upcast = param.float()
    remainder = bits - _bits(upcast)
    shift = RESIDUAL_SHIFTS[dtype, MASTER_BITS[residual_dtype]]
    if shift:
        remainder = (remainder + (1 << (shift - 1))) >> shift  # to nearest (>> floors, as the kernel's)
    residual = remainder.clamp(*_LIMITS[residual_dtype])
    return param, torch.where(upcast.isfinite(), residual, 0).to(residual_dtype)
