"""Stochastic rounding in PyTorch: the reference path's twin of ``kernels.rounding``."""
import torch


def stochastic_round(value: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``value`` (fp32) to ``dtype`` (bf16 or fp16; fp32 is returned as it is), rounded to one of the
    two ``dtype`` values around it, the farther with probability |value − nearest| / their distance,
    so that E[result] = value. Uniform draws come from ``generator`` (a CPU generator)."""
    if dtype == torch.float32:
        return value
    nearest = value.to(dtype)
    nearest_value = nearest.float()
    residual = value - nearest_value
    # The neighbour on the residual's side, one unit of the sign-magnitude bits away from zero or toward it.
    bits = nearest.view(torch.int16).int()
    away_from_zero = (residual > 0) == (nearest_value > 0)
    neighbour_bits = torch.where(away_from_zero, bits + 1, bits - 1)
    smallest = torch.where(residual > 0, 1, -32767)  # from ±0: the smallest subnormal, 0x0001 or 0x8001
    neighbour_bits = torch.where(nearest_value == 0, smallest, neighbour_bits)
    neighbour = neighbour_bits.to(torch.int16).view(dtype)
    probability = residual.abs() / (neighbour.float() - nearest_value).abs()
    uniform = torch.rand(value.shape, generator=generator).to(value.device)
    keep = (residual == 0) | ~residual.isfinite() | (uniform >= probability)
    return torch.where(keep, nearest, neighbour)
