"""Adafactor's math for the multi-tensor launcher, and the one sum it cannot make: a matrix's column sums.

A step is four phases (``optim.adafactor``; the equations in ``optim.reference.adafactor``):

1. reduce: Σθ² per tensor; for a factored tensor (2+ dims) Σg² per row (the launcher's per-row
   output); for a vector, also Σu² from its variance lerped in registers. Column sums: ``column_square_sums``.
2. statistics: torch ops on the O(n + m) row and column vectors (no kernel here).
3. second reduce, factored tensors: Σu² per tensor, reading r[i]/mean(r) and c[j] (``TensorSlots.factors``).
4. update: θ ← θ·(1 − lr·λ) − (α/denom)·u, with the vector's variance stored.

``hyper`` is ``AdafactorHyper`` (ε₁², 1 − lr·λ), ``FLAGS`` ``AdafactorFlags`` (MAXIMIZE).
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl


class AdafactorHyper(NamedTuple):
    eps1_squared: float  # the floor of the variance estimate before its root: ε₁², as torch squares it
    decay: float  # 1 − lr·weight_decay, applied to θ before the update


class AdafactorFlags(NamedTuple):
    MAXIMIZE: bool


@triton.jit
def lerp(start, end, weight):
    """torch.lerp's formula, whose two branches round differently: from the nearer end."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def scaled_gradient(grad, variance, hyper, FLAGS: tl.constexpr):
    """u = G / max(√V̂, ε₁), G = −g when maximizing."""
    update = grad * tl.math.rsqrt(tl.maximum(variance, hyper.eps1_squared))
    if FLAGS.MAXIMIZE:
        update = -update
    return update


@triton.jit
def square_sums(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return param * param, grad * grad  # Σθ² per tensor, Σg² per row (the last output, per row)


@triton.jit
def vector_sums(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    variance = lerp(states[0], grad * grad, scalars[0])  # scalars: (1 − β̂₂ₜ, outputs...)
    update = scaled_gradient(grad, variance, hyper, FLAGS)
    return param * param, update * update  # Σθ², Σu²


@triton.jit
def factored_update_squares(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    # The reduce's scalars are its inputs: none of the tensor's own, then the gathered R_i/mean, C_j.
    update = scaled_gradient(grad, scalars[0] * scalars[1], hyper, FLAGS)
    return (update * update,)  # Σu²


@triton.jit
def vector_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    variance = lerp(states[0], grad * grad, scalars[0])  # scalars: (1 − β̂₂ₜ, −α/denom)
    update = scaled_gradient(grad, variance, hyper, FLAGS)
    return param * hyper.decay + scalars[1] * update, (variance,)


@triton.jit
def factored_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    # scalars: (−α/denom, then the gathered R_i / max(mean R, ε₁) and C_j, whose product is V̂_ij)
    update = scaled_gradient(grad, scalars[1] * scalars[2], hyper, FLAGS)
    return param * hyper.decay + scalars[0] * update, ()


@triton.jit
def column_square_sums_kernel(grad_ptr, out_ptr, n_rows, n_columns, BLOCK_ROWS: tl.constexpr,
                              BLOCK_COLUMNS: tl.constexpr):
    """out[b, j] += Σ_i g[b, i, j]² over this program's tile of rows: one atomic per column and tile."""
    matrix = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    columns = tl.program_id(2).to(tl.int64) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    mask = (rows[:, None] < n_rows) & (columns[None, :] < n_columns)
    offsets = matrix * n_rows * n_columns + rows[:, None] * n_columns + columns[None, :]
    grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(out_ptr + matrix * n_columns + columns, tl.sum(grad * grad, axis=0), mask=columns < n_columns)


def column_square_sums(grad: torch.Tensor, out: torch.Tensor) -> None:
    """Adds Σ_i g[..., i, j]² into ``out`` (fp32, contiguous, shaped [..., 1, m]) for a contiguous ``grad``
    [..., n, m]: the column statistics the launcher's per-row sums cannot give."""
    n_rows, n_columns = grad.shape[-2], grad.shape[-1]
    matrices = grad.numel() // (n_rows * n_columns)
    grid = lambda meta: (matrices, triton.cdiv(n_rows, meta["BLOCK_ROWS"]), triton.cdiv(n_columns, meta["BLOCK_COLUMNS"]))
    # 32 × 64 fp32 tiles: 8 KiB of registers per program, and the atomics a 32nd of the elements.
    column_square_sums_kernel[grid](grad, out, n_rows, n_columns, BLOCK_ROWS=32, BLOCK_COLUMNS=64)


__all__ = ["AdafactorFlags", "AdafactorHyper", "column_square_sums", "factored_update", "factored_update_squares",
           "square_sums", "vector_sums", "vector_update"]
