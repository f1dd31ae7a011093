"""Stochastic rounding in PyTorch: the reference path's twin of ``kernels.rounding``, the same
arithmetic on 16 uniform random bits per element (``round_with_bits``), drawn here from a CPU
generator where the kernel takes them from its Philox draw."""
import torch

_LARGEST = {torch.bfloat16: torch.finfo(torch.bfloat16).max, torch.float16: torch.finfo(torch.float16).max}


def round_with_bits(value: torch.Tensor, dtype: torch.dtype, random16: torch.Tensor) -> torch.Tensor:
    """``value`` (fp32) to ``dtype`` (bf16 or fp16) rounded stochastically by ``random16`` (integers in
    [0, 2^16)), as ``kernels.rounding.round_stochastically``: bf16 adds them to the fp32 bits and
    truncates the low 16; fp16 takes ⌊|x|/s + r/2^16 (13 bits)⌋·s, s its unit at |x|. NaN, ±inf and
    values past the largest finite one round to nearest."""
    bits = value.view(torch.int32).long() & 0xFFFFFFFF
    magnitude = value.abs()
    if dtype == torch.bfloat16:
        truncated = (((bits + random16) >> 16) & 0xFFFF).to(torch.int32).to(torch.int16).view(torch.bfloat16)
    else:
        exponent = ((bits >> 23) & 0xFF).clamp(min=127 - 14)
        unit = ((exponent - 10) << 23).to(torch.int32).view(torch.float32)
        inverse = ((254 - exponent + 10) << 23).to(torch.int32).view(torch.float32)
        rounded = torch.floor(magnitude * inverse + (random16 >> 3).float() * (1.0 / 8192.0)) * unit
        signed = (rounded.view(torch.int32).long() | (bits & 0x80000000)).to(torch.int32)
        truncated = signed.view(torch.float32).to(torch.float16)
    return torch.where(magnitude <= _LARGEST[dtype], truncated, value.to(dtype))


def stochastic_round(value: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``value`` (fp32) to ``dtype`` (bf16 or fp16; fp32 is returned as it is), rounded to one of the
    two ``dtype`` values around it, the farther with probability |value − nearest| / their distance,
    so that E[result] = value. The 16 random bits per element come from ``generator`` (a CPU generator)."""
    if dtype == torch.float32:
        return value
    random16 = torch.randint(0, 2**16, value.shape, generator=generator, dtype=torch.int64).to(value.device)
    return round_with_bits(value.float().contiguous(), dtype, random16)
