"""Muon's Newton–Schulz orthogonalization in Triton, batched over a stack of same-shape matrices.

torch.optim.Muon's quintic iteration (``optim.reference.muon``, whose docstring has the equations),
in torch's order and in torch's precision, bf16: the input is rounded to bf16, divided by its
Frobenius norm (clamped to ε), then each of the k steps computes, with fp32 accumulation and a bf16
result each,

    A = X·Xᵀ           symmetric_product_kernel (only the tiles on and above the diagonal)
    B = b·A + c·A·A    symmetric_product_kernel (A·A = A·Aᵀ: symmetric too)
    X = a·X + B·X      newton_schulz_step_kernel (a general product)

A tall matrix (more rows than columns) is iterated transposed, as torch does, so that A is the
smaller Gram matrix; the transpose is a view (strides), never a copy.

Symmetry: with T = ⌈r / BLOCK⌉ tiles along A's side, a program computes the tile (i, j), i ≤ j, and
stores it at (i, j) and, transposed, at (j, i): T(T+1)/2 tiles computed of T², as Flash-Muon does.
The (i, j) pairs come from a small int32 table (``upper_tiles``) so no program is idle.

Every kernel takes a batch axis (grid axis 0: one launch per product for the whole stack) and int64
offsets: a stack of large matrices passes 2^31 elements.
"""
import torch
import triton
import triton.language as tl

from fusedoptim.kernels.rounding import INTERPRETED, round_to_nearest

# Square tiles of A (a tile and its mirror must cover the same rows and columns). On a GPU 64×64
# tiles with a 32-deep K step feed the tensor cores; under the interpreter, whose cost is per
# block operation, 16 (tl.dot's smallest) keeps the tests' small matrices several tiles wide, so the
# mirrored stores are exercised.
BLOCK = 32 if INTERPRETED else 64
BLOCK_K = 32
NORM_BLOCK = 1024  # elements per program of the two element-wise passes of the normalization
GROUP_ROWS = 8  # newton_schulz_step_kernel: programs that share a band of B's rows run together (L2 reuse)
# The interpreter (triton 3.9) multiplies bf16 tiles in tl.dot as if they were integers (garbage,
# seen on 16×16 tiles); fp32 tiles multiply right, and a bf16 × bf16 product is exact in fp32, so
# under the interpreter the tiles are upcast first. On a GPU they stay bf16, for the tensor cores.
UPCAST_DOT_OPERANDS = tl.constexpr(INTERPRETED)


@triton.jit
def dot_operand(tile):
    """A bf16 tile as tl.dot takes it correctly here: itself on a GPU, fp32 under the interpreter."""
    if UPCAST_DOT_OPERANDS:
        return tile.to(tl.float32)
    else:
        return tile


@triton.jit
def sum_of_squares_kernel(x_ptr, sums_ptr, numel, BLOCK_SIZE: tl.constexpr):
    """sums[m] += Σ bf16(x)² over this program's block of matrix m (contiguous, ``numel`` each)."""
    matrix = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    x = tl.load(x_ptr + matrix * numel + offsets, mask=offsets < numel, other=0.0)
    x = round_to_nearest(x.to(tl.float32), tl.bfloat16).to(tl.float32)  # torch's grad.bfloat16(), then the norm
    tl.atomic_add(sums_ptr + matrix, tl.sum(x * x, axis=0))


@triton.jit
def normalize_kernel(x_ptr, sums_ptr, out_ptr, numel, eps, BLOCK_SIZE: tl.constexpr):
    """out = bf16(x) / max(‖bf16(x)‖, ε), each step rounded to bf16 as torch's bf16 ops round."""
    matrix = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < numel
    norm = round_to_nearest(tl.sqrt(tl.load(sums_ptr + matrix)), tl.bfloat16).to(tl.float32)
    norm = tl.maximum(norm, eps)  # eps arrives already rounded to bf16: torch clamps a bf16 norm
    x = tl.load(x_ptr + matrix * numel + offsets, mask=mask, other=0.0)
    x = round_to_nearest(x.to(tl.float32), tl.bfloat16).to(tl.float32)
    tl.store(out_ptr + matrix * numel + offsets, round_to_nearest(x / norm, tl.bfloat16), mask=mask)


@triton.jit
def symmetric_product_kernel(x_ptr, c_ptr, out_ptr, tiles_ptr, rows, inner,
                             stride_x_matrix, stride_x_row, stride_x_col,
                             stride_c_matrix, stride_c_row, stride_c_col,
                             stride_out_matrix, stride_out_row, stride_out_col,
                             alpha, beta, HAS_C: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """out = alpha·X·Xᵀ (+ beta·C, C symmetric), X of shape rows × inner: the tile (i, j), i ≤ j,
    from this program's row of ``tiles``, stored at (i, j) and mirrored at (j, i)."""
    matrix = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1).to(tl.int64)
    tile_i = tl.load(tiles_ptr + 2 * tile).to(tl.int64)
    tile_j = tl.load(tiles_ptr + 2 * tile + 1).to(tl.int64)
    rows_i = tile_i * BLOCK + tl.arange(0, BLOCK)
    rows_j = tile_j * BLOCK + tl.arange(0, BLOCK)
    x_ptr += matrix * stride_x_matrix
    accumulator = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(0, tl.cdiv(inner, BLOCK_K)):
        cols = k * BLOCK_K + tl.arange(0, BLOCK_K)
        left = tl.load(x_ptr + rows_i[:, None] * stride_x_row + cols[None, :] * stride_x_col,
                       mask=(rows_i[:, None] < rows) & (cols[None, :] < inner), other=0.0)
        # Xᵀ's tile is X's rows j read across: a transposed load, no transposed copy of X.
        right = tl.load(x_ptr + rows_j[None, :] * stride_x_row + cols[:, None] * stride_x_col,
                        mask=(rows_j[None, :] < rows) & (cols[:, None] < inner), other=0.0)
        accumulator = tl.dot(dot_operand(left), dot_operand(right), accumulator)
    value = alpha * accumulator
    mask = (rows_i[:, None] < rows) & (rows_j[None, :] < rows)
    if HAS_C:
        c = tl.load(c_ptr + matrix * stride_c_matrix + rows_i[:, None] * stride_c_row + rows_j[None, :] * stride_c_col,
                    mask=mask, other=0.0)
        value = beta * c.to(tl.float32) + value  # torch's addmm: β·C + α·(A·A), rounded once
    value = round_to_nearest(value, tl.bfloat16)
    out_ptr += matrix * stride_out_matrix
    tl.store(out_ptr + rows_i[:, None] * stride_out_row + rows_j[None, :] * stride_out_col, value, mask=mask)
    if tile_i != tile_j:
        # The mirror: element (a, b) of this tile is element (b, a) of tile (j, i).
        tl.store(out_ptr + rows_j[None, :] * stride_out_row + rows_i[:, None] * stride_out_col, value, mask=mask)


@triton.jit
def newton_schulz_step_kernel(b_ptr, x_ptr, out_ptr, rows, cols, a,
                              stride_b_matrix, stride_b_row, stride_b_col,
                              stride_x_matrix, stride_x_row, stride_x_col,
                              stride_out_matrix, stride_out_row, stride_out_col,
                              BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_ROWS: tl.constexpr):
    """out = a·X + B·X, B rows × rows, X rows × cols, rounded to bf16 (then stored in out's dtype:
    the last step writes the param's dtype, exactly, since every bf16 value is one)."""
    matrix = tl.program_id(0).to(tl.int64)
    program = tl.program_id(1)
    # Grouped ordering (Triton's matmul tutorial): GROUP_ROWS bands of rows run together and share
    # the tiles of X they read.
    row_tiles, col_tiles = tl.cdiv(rows, BLOCK), tl.cdiv(cols, BLOCK)
    per_group = GROUP_ROWS * col_tiles
    first_row_tile = (program // per_group) * GROUP_ROWS
    group_rows = min(row_tiles - first_row_tile, GROUP_ROWS)
    row_tile = first_row_tile + (program % per_group) % group_rows
    col_tile = (program % per_group) // group_rows
    out_rows = row_tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    out_cols = col_tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    b_ptr += matrix * stride_b_matrix
    x_ptr += matrix * stride_x_matrix
    accumulator = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(0, tl.cdiv(rows, BLOCK_K)):
        inner = k * BLOCK_K + tl.arange(0, BLOCK_K)
        left = tl.load(b_ptr + out_rows[:, None] * stride_b_row + inner[None, :] * stride_b_col,
                       mask=(out_rows[:, None] < rows) & (inner[None, :] < rows), other=0.0)
        right = tl.load(x_ptr + inner[:, None] * stride_x_row + out_cols[None, :] * stride_x_col,
                        mask=(inner[:, None] < rows) & (out_cols[None, :] < cols), other=0.0)
        accumulator = tl.dot(dot_operand(left), dot_operand(right), accumulator)
    mask = (out_rows[:, None] < rows) & (out_cols[None, :] < cols)
    x = tl.load(x_ptr + out_rows[:, None] * stride_x_row + out_cols[None, :] * stride_x_col, mask=mask, other=0.0)
    value = round_to_nearest(a * x.to(tl.float32) + accumulator, tl.bfloat16)  # torch's addmm(X, B, X, beta=a)
    out_ptr += matrix * stride_out_matrix
    tl.store(out_ptr + out_rows[:, None] * stride_out_row + out_cols[None, :] * stride_out_col,
             value.to(out_ptr.dtype.element_ty), mask=mask)


_tile_tables: dict = {}  # (tiles along A's side, device) -> the int32 (i, j) pairs, i ≤ j, made once


def upper_tiles(tiles: int, device: torch.device) -> torch.Tensor:
    """The tiles on and above the diagonal of a tiles × tiles grid, row by row: T(T+1)/2 rows of (i, j)."""
    key = (tiles, device)
    if key not in _tile_tables:
        pairs = [(i, j) for i in range(tiles) for j in range(i, tiles)]
        _tile_tables[key] = torch.tensor(pairs, dtype=torch.int32).to(device)
    return _tile_tables[key]


def symmetric_product(x: torch.Tensor, out: torch.Tensor, alpha: float = 1.0, c: torch.Tensor = None,
                      beta: float = 0.0) -> None:
    """out[m] = alpha·x[m]·x[m]ᵀ (+ beta·c[m]) for every matrix of the stack, in bf16; one launch."""
    matrices, rows, inner = x.shape
    tiles = upper_tiles(triton.cdiv(rows, BLOCK), x.device)
    c_strides = c.stride() if c is not None else (0, 0, 0)
    symmetric_product_kernel[(matrices, tiles.shape[0])](
        x, c if c is not None else out, out, tiles, rows, inner, *x.stride(), *c_strides, *out.stride(), alpha, beta,
        HAS_C=c is not None, BLOCK=BLOCK, BLOCK_K=BLOCK_K)


def newton_schulz_step(b: torch.Tensor, x: torch.Tensor, out: torch.Tensor, a: float) -> None:
    """out[m] = a·x[m] + b[m]·x[m] for every matrix of the stack; one launch."""
    matrices, rows, cols = x.shape
    grid = (matrices, triton.cdiv(rows, BLOCK) * triton.cdiv(cols, BLOCK))
    newton_schulz_step_kernel[grid](b, x, out, rows, cols, a, *b.stride(), *x.stride(), *out.stride(),
                                    BLOCK=BLOCK, BLOCK_K=BLOCK_K, GROUP_ROWS=GROUP_ROWS)


def newton_schulz(stack: torch.Tensor, out: torch.Tensor, coefficients: tuple, steps: int, eps: float) -> None:
    """out[m] ← NS^{(a,b,c)}_steps(stack[m]; ε) for each matrix of ``stack`` (matrices × rows × cols,
    contiguous, fp32, bf16 or fp16), as torch.optim.Muon computes it: bf16, tall ones transposed.
    ``out``: a contiguous tensor of stack's shape in any float dtype, ``stack`` itself allowed (it is
    read only before the iterations); it receives the bf16 values."""
    if stack.dim() != 3 or not stack.is_contiguous() or out.shape != stack.shape or not out.is_contiguous():
        raise ValueError(f"newton_schulz: stack (shape {tuple(stack.shape)}) and out (shape {tuple(out.shape)}) must "
                         "be contiguous stacks of matrices of one shape (matrices × rows × cols)")
    a, b, c = coefficients
    matrices, rows, cols = stack.shape
    numel = rows * cols
    sums = torch.zeros(matrices, dtype=torch.float32, device=stack.device)
    grid = (matrices, triton.cdiv(numel, NORM_BLOCK))
    sum_of_squares_kernel[grid](stack, sums, numel, BLOCK_SIZE=NORM_BLOCK)
    x = torch.empty(stack.shape, dtype=torch.bfloat16, device=stack.device)
    bf16_eps = float(torch.tensor(eps, dtype=torch.bfloat16))  # torch clamps the bf16 norm at a bf16 ε
    normalize_kernel[grid](stack, sums, x, numel, bf16_eps, BLOCK_SIZE=NORM_BLOCK)
    if steps == 0:
        out.copy_(x)
        return
    transposed = rows > cols  # torch iterates X = Gᵀ for a tall G: A is then the smaller side's Gram matrix
    if transposed:
        x, target = x.mT, out.mT
    else:
        target = out
    side = x.shape[1]
    gram = torch.empty((matrices, side, side), dtype=torch.bfloat16, device=stack.device)
    polynomial = torch.empty_like(gram)
    spare = torch.empty(x.shape, dtype=torch.bfloat16, device=stack.device)
    for step in range(steps):
        symmetric_product(x, gram)  # A = X·Xᵀ
        symmetric_product(gram, polynomial, alpha=c, c=gram, beta=b)  # B = b·A + c·A·A
        last = step == steps - 1
        following = target if last else spare
        newton_schulz_step(polynomial, x, following, a)  # X = a·X + B·X
        if not last:
            x, spare = following, (x if x.is_contiguous() else torch.empty_like(following))


__all__ = ["BLOCK", "BLOCK_K", "newton_schulz", "newton_schulz_step", "normalize_kernel", "newton_schulz_step_kernel",
           "sum_of_squares_kernel", "symmetric_product", "symmetric_product_kernel", "upper_tiles"]
