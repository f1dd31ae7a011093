"""The one multi-tensor launcher that every elementwise update rule goes through.

A rule contributes only its math, a ``@triton.jit`` function with this signature::

    update(param, grad, states, scalars, hyper, FLAGS) -> (param, states)

- ``param``, ``grad`` and each entry of the tuple ``states`` are fp32 blocks, already loaded and
  upcast from their storage dtype; the launcher rounds what the rule returns back to storage.
- ``scalars`` is a tuple of fp32 values, one per tensor (the step counter, Tiger's lr multiplier...);
  with ``TensorSlots.row_length`` the last one is a block, one value per row (Tiger's embeddings).
- ``hyper`` is the rule's named tuple of hyperparameters (``hyper.lr``, ``hyper.beta1``): Python
  floats, or 0-d device tensors that ``kernels.elementwise.hyperparameter()`` reads. Neither
  recompiles when its value changes (Triton specialises integers, not floats; a tensor is a pointer).
- ``FLAGS`` is the rule's named tuple of compile-time options (``FLAGS.AMSGRAD``): one compiled
  variant each. A tensor's own (``TensorSlots.flags``: ``FIRST_STEP``, a state's first step) are set
  in it by name for that tensor's launch.
- ``PARAM_ACTIVE``, optional, ``(scalars, hyper, FLAGS) -> bool`` per tensor: where it is False θ is
  neither read nor written (Tiger's micro-steps that do not move θ).

``multi_tensor_reduce_kernel`` walks the same table with a ``reduce`` function of the same arguments
that returns a tuple of fp32 term blocks, one per output; output j of a tensor is summed into the
fp32 value its j-th trailing scalar points to (the last one per row, with ``row_length``). So a
rule's per-tensor norms, NaN counts and dot products take one launch, with no host sync.

Everything else belongs here: the table of pointers and sizes (one row per tensor), the map from
program to (tensor, chunk) that torch's multi_tensor_apply also builds, int64 offsets, the masked
tail, the fp32 upcast and the store, rounded to nearest or stochastically (``kernels.rounding``).

``Launch`` is one prepared launch: built once from tensors that share a launch key, checked, with its
table and program map on the device, then reused step after step. A step only hands it the current
gradients (after ``zero_grad(set_to_none=True)`` each is a new tensor): their pointers are written
into the table when they changed, from the host in eager mode, and by a small kernel whose arguments
are the gradients while a CUDA graph is captured (a capture may copy nothing from the host).
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl

from autotune import launch_config
from kernels.master_weights import rebuild_master, split_master
from kernels.quantization import load_dequantized, random_key, store_quantized
from kernels.rounding import INTERPRETED, round_to_storage

ALIGNMENT_BYTES = 16  # a 16-byte aligned tensor can be read with 128-bit vector loads


@triton.jit
def _load(base_ptr, offsets, numel, MASKED: tl.constexpr):
    # Full blocks are loaded without a mask so the compiler can use vector loads; only the tail of
    # each tensor pays for the mask.
    if MASKED:
        return tl.load(base_ptr + offsets, mask=offsets < numel, other=0.0).to(tl.float32)
    else:
        return tl.load(base_ptr + offsets).to(tl.float32)


# One row of the pointer table per tensor, int64 each: [numel, row_length, θ, g, states..., scalars...];
# with quantized states, [..., codes..., scales..., scalars...]: N_STATE_COLUMNS is twice N_STATES; with
# split master weights (kernels.master_weights), θ's residual last.
PARAM_COLUMN, GRAD_COLUMN, FIRST_STATE_COLUMN = tl.constexpr(2), tl.constexpr(3), tl.constexpr(4)
RANDOM_STREAM = tl.constexpr(2**40)  # Philox counter: the tensor above bit 40, the element offset below


@triton.jit
def _store(base_ptr, offsets, numel, value, MASKED: tl.constexpr, STOCHASTIC: tl.constexpr, seed, stream,
           STORE: tl.constexpr, STORES: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """``value`` rounded to the pointer's dtype; stochastically, as store STORE of STORES per element."""
    value = round_to_storage(value, base_ptr.dtype.element_ty, STOCHASTIC, seed, stream + offsets, STORE, STORES,
                             BLOCK_SIZE)
    if MASKED:
        tl.store(base_ptr + offsets, value, mask=offsets < numel)
    else:
        tl.store(base_ptr + offsets, value)


@triton.jit
def _load_param(row_ptr, offsets, numel, PARAM_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, MASKED: tl.constexpr,
                MASTER_BITS: tl.constexpr, RESIDUAL_COLUMN: tl.constexpr):
    """θ in fp32: the param itself, or with MASTER_BITS its fp32 master, rebuilt from it and its residual."""
    param_ptr = _pointer(row_ptr, PARAM_COLUMN, PARAM_DTYPE, ALIGNED)
    if MASTER_BITS == 0:
        return _load(param_ptr, offsets, numel, MASKED)
    else:
        residual_ptr = _pointer(row_ptr, RESIDUAL_COLUMN, tl.int16 if MASTER_BITS == 32 else tl.int8, ALIGNED)
        if MASKED:
            param = tl.load(param_ptr + offsets, mask=offsets < numel, other=0.0)
            residual = tl.load(residual_ptr + offsets, mask=offsets < numel, other=0)
        else:
            param = tl.load(param_ptr + offsets)
            residual = tl.load(residual_ptr + offsets)
        return rebuild_master(param, residual, PARAM_DTYPE, MASTER_BITS)


@triton.jit
def _store_param(row_ptr, offsets, numel, value, PARAM_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                 MASKED: tl.constexpr, STOCHASTIC: tl.constexpr, seed, stream, MASTER_BITS: tl.constexpr,
                 RESIDUAL_COLUMN: tl.constexpr, STORES: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """θ back: rounded to its dtype, or with MASTER_BITS split into θ and its residual."""
    param_ptr = _pointer(row_ptr, PARAM_COLUMN, PARAM_DTYPE, ALIGNED)
    if MASTER_BITS == 0:
        _store(param_ptr, offsets, numel, value, MASKED, STOCHASTIC, seed, stream, 0, STORES, BLOCK_SIZE)
    else:
        param, residual = split_master(value, PARAM_DTYPE, MASTER_BITS)
        residual_ptr = _pointer(row_ptr, RESIDUAL_COLUMN, residual.dtype, ALIGNED)
        if MASKED:
            tl.store(param_ptr + offsets, param, mask=offsets < numel)
            tl.store(residual_ptr + offsets, residual, mask=offsets < numel)
        else:
            tl.store(param_ptr + offsets, param)
            tl.store(residual_ptr + offsets, residual)


@triton.jit
def _pointer(row_ptr, column, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    pointer = tl.load(row_ptr + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _param_active(scalars, hyper, FLAGS: tl.constexpr, PARAM_ACTIVE: tl.constexpr):
    if PARAM_ACTIVE is not None:
        return PARAM_ACTIVE(scalars, hyper, FLAGS)
    else:
        return True


@triton.jit
def _load_block(row_ptr, offsets, numel, scalars, inv_scale, param_active, N_STATES: tl.constexpr,
                N_STATE_COLUMNS: tl.constexpr, N_INPUTS: tl.constexpr, PER_ROW: tl.constexpr,
                PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, QUANT: tl.constexpr, ALIGNED: tl.constexpr,
                AMP: tl.constexpr, MASKED: tl.constexpr, MASTER_BITS: tl.constexpr, RESIDUAL_COLUMN: tl.constexpr):
    grad = _load(_pointer(row_ptr, GRAD_COLUMN, PARAM_DTYPE, ALIGNED), offsets, numel, MASKED)
    if param_active:
        param = _load_param(row_ptr, offsets, numel, PARAM_DTYPE, ALIGNED, MASKED, MASTER_BITS, RESIDUAL_COLUMN)
    else:
        param = tl.zeros_like(grad)  # not read: the rule's result for θ is not stored either
    if AMP:
        grad = grad * inv_scale  # GradScaler's loss scale undone in fp32, in registers: no pass over g
    states = ()
    for i in tl.static_range(N_STATES):
        state_ptr = _pointer(row_ptr, FIRST_STATE_COLUMN + i, STATE_DTYPE, ALIGNED)
        if QUANT is not None:
            scale_ptr = _pointer(row_ptr, FIRST_STATE_COLUMN + N_STATES + i, tl.float32, False)
            states = states + (load_dequantized(state_ptr, scale_ptr, offsets, numel, QUANT.UNSIGNED[i], QUANT.BITS,
                                                QUANT.BLOCK, MASKED),)
        else:
            states = states + (_load(state_ptr, offsets, numel, MASKED),)
    if PER_ROW:
        # The last scalar holds one value per row of row_length elements (an embedding table's
        # per-row lr): gathered per element, from a vector small enough to stay in cache.
        row_length = tl.load(row_ptr + 1)
        values = tl.load(row_ptr + FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_INPUTS).to(tl.pointer_type(tl.float32))
        scalars = scalars + (_load(values, offsets // row_length, tl.load(row_ptr) // row_length, MASKED),)
    return param, grad, states, scalars


@triton.jit
def _update_block(row_ptr, start, offsets, numel, scalars, inv_scale, hyper, seed, stream, quantization_count, param_active,
                  UPDATE: tl.constexpr, FLAGS: tl.constexpr, N_STATES: tl.constexpr, N_STATE_COLUMNS: tl.constexpr,
                  N_INPUTS: tl.constexpr, PER_ROW: tl.constexpr, PARAM_DTYPE: tl.constexpr,
                  STATE_DTYPE: tl.constexpr, QUANT: tl.constexpr, ALIGNED: tl.constexpr, STOCHASTIC: tl.constexpr,
                  AMP: tl.constexpr, BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr, MASTER_BITS: tl.constexpr,
                  RESIDUAL_COLUMN: tl.constexpr):
    param, grad, states, scalars = _load_block(row_ptr, offsets, numel, scalars, inv_scale, param_active, N_STATES,
                                               N_STATE_COLUMNS, N_INPUTS, PER_ROW, PARAM_DTYPE, STATE_DTYPE, QUANT,
                                               ALIGNED, AMP, MASKED, MASTER_BITS, RESIDUAL_COLUMN)
    param, states = UPDATE(param, grad, states, scalars, hyper, FLAGS)
    # Quantized states round with their own hash (kernels.quantization): θ alone takes Philox bits,
    # 8 elements to a draw instead of 8 // (N_STATES + 1).
    STORES: tl.constexpr = 1 if QUANT is not None else N_STATES + 1
    if param_active:
        _store_param(row_ptr, offsets, numel, param, PARAM_DTYPE, ALIGNED, MASKED, STOCHASTIC, seed, stream, MASTER_BITS,
                     RESIDUAL_COLUMN, STORES, BLOCK_SIZE)
    for i in tl.static_range(N_STATES):
        state_ptr = _pointer(row_ptr, FIRST_STATE_COLUMN + i, STATE_DTYPE, ALIGNED)
        if QUANT is not None:
            scale_ptr = _pointer(row_ptr, FIRST_STATE_COLUMN + N_STATES + i, tl.float32, False)
            key = random_key(quantization_count, i)
            store_quantized(state_ptr, scale_ptr, start, offsets, numel, states[i], QUANT.UNSIGNED[i], QUANT.STOCHASTIC[i],
                            key, QUANT.BITS, QUANT.BLOCK, BLOCK_SIZE, MASKED)
        else:
            _store(state_ptr, offsets, numel, states[i], MASKED, STOCHASTIC, seed, stream, i + 1, STORES,
                   BLOCK_SIZE)


@triton.jit
def _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr, N_STATE_COLUMNS: tl.constexpr,
                 N_INPUTS: tl.constexpr, N_SCALARS: tl.constexpr, MASTER_BITS: tl.constexpr):
    """This program's tensor (its index in the launch), its row of the pointer table, its size, its
    chunk, and the values of its first N_INPUTS per-tensor scalars."""
    program = tl.program_id(0)
    tensor = tl.load(chunk_tensor_ptr + program).to(tl.int64)
    chunk = tl.load(chunk_index_ptr + program).to(tl.int64)  # int64: tensors may pass 2^31 elements
    row_ptr = table_ptr + tensor * (FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_SCALARS + (MASTER_BITS != 0))
    scalars = ()
    for i in tl.static_range(N_INPUTS):
        scalar_ptr = tl.load(row_ptr + FIRST_STATE_COLUMN + N_STATE_COLUMNS + i).to(tl.pointer_type(tl.float32))
        scalars = scalars + (tl.load(scalar_ptr),)
    return tensor, row_ptr, tl.load(row_ptr), chunk, scalars


@triton.jit
def _amp_scaling(inv_scale_ptr, found_inf_ptr, AMP: tl.constexpr):
    """GradScaler's state for this step: (whether to step at all, the inverse loss scale). A step with
    an inf or NaN gradient (found_inf ≠ 0) writes nothing: params and every state stay as they were."""
    active = True
    inv_scale = 1.0
    if AMP:
        active = tl.load(found_inf_ptr) == 0
        inv_scale = tl.load(inv_scale_ptr)
    return active, inv_scale


@triton.jit
def multi_tensor_update_kernel(
    table_ptr, chunk_tensor_ptr, chunk_index_ptr, hyper, seed_ptr, inv_scale_ptr, found_inf_ptr, quantization_count_ptr,
    UPDATE: tl.constexpr, PARAM_ACTIVE: tl.constexpr, FLAGS: tl.constexpr, N_STATES: tl.constexpr,
    N_STATE_COLUMNS: tl.constexpr, N_SCALARS: tl.constexpr, PER_ROW: tl.constexpr, PARAM_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr, QUANT: tl.constexpr, ALIGNED: tl.constexpr, STOCHASTIC: tl.constexpr,
    AMP: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr, MASTER_BITS: tl.constexpr,
):
    """Every tensor's chunk of the update. With STOCHASTIC, 16-bit stores round stochastically with
    the seed at seed_ptr: one Philox draw per element of each tensor, 16 bits of it per store. With AMP,
    gradients are unscaled by the value at inv_scale_ptr, and nothing is written if found_inf ≠ 0.
    With QUANT (quantized states, ``QuantizedStates``), the states are codes and scales, and the stochastic
    kinds round their codes with draws keyed by the count at quantization_count_ptr. With MASTER_BITS
    (24 or 32), θ is the fp32 master rebuilt from the param and its residual, and split back."""
    N_INPUTS: tl.constexpr = N_SCALARS - PER_ROW
    RESIDUAL_COLUMN: tl.constexpr = FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_SCALARS
    tensor, row_ptr, numel, chunk, scalars = _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr,
                                                          N_STATE_COLUMNS, N_INPUTS, N_SCALARS, MASTER_BITS)
    seed = 0
    if STOCHASTIC:
        seed = tl.load(seed_ptr)
    quantization_count = 0
    if QUANT is not None:
        quantization_count = tl.load(quantization_count_ptr)
    active, inv_scale = _amp_scaling(inv_scale_ptr, found_inf_ptr, AMP)
    param_active = _param_active(scalars, hyper, FLAGS, PARAM_ACTIVE)
    stream = tensor * RANDOM_STREAM
    if active:
        for block in range(BLOCKS_PER_PROGRAM):
            start = (chunk * BLOCKS_PER_PROGRAM + block) * BLOCK_SIZE
            offsets = start + tl.arange(0, BLOCK_SIZE)
            if start + BLOCK_SIZE <= numel:
                _update_block(row_ptr, start, offsets, numel, scalars, inv_scale, hyper, seed, stream, quantization_count,
                              param_active, UPDATE, FLAGS, N_STATES, N_STATE_COLUMNS, N_INPUTS, PER_ROW, PARAM_DTYPE,
                              STATE_DTYPE, QUANT, ALIGNED, STOCHASTIC, AMP, BLOCK_SIZE, MASKED=False,
                              MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN)
            elif start < numel:
                _update_block(row_ptr, start, offsets, numel, scalars, inv_scale, hyper, seed, stream, quantization_count,
                              param_active, UPDATE, FLAGS, N_STATES, N_STATE_COLUMNS, N_INPUTS, PER_ROW, PARAM_DTYPE,
                              STATE_DTYPE, QUANT, ALIGNED, STOCHASTIC, AMP, BLOCK_SIZE, MASKED=True,
                              MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN)


@triton.jit
def _sum_per_row(row_ptr, out_ptr, offsets, numel, terms, BLOCK_SIZE: tl.constexpr):
    """Adds each row's part of ``terms`` (rows of row_length elements) into out_ptr[row]: a running
    sum over the block, whose value at each row's last element in the block, minus its value at the
    previous row's end, is that row's part. A handful of atomics per block, whatever the row length."""
    row_length = tl.load(row_ptr + 1)
    running = tl.cumsum(terms, axis=0)
    rows = offsets // row_length
    in_tensor = offsets < numel
    block_end = (tl.arange(0, BLOCK_SIZE) == BLOCK_SIZE - 1) | (offsets == numel - 1)
    row_end = (offsets + 1) % row_length == 0
    tl.atomic_add(out_ptr + rows, running, mask=in_tensor & (row_end | block_end))
    tl.atomic_add(out_ptr + rows + 1, -running, mask=in_tensor & row_end & ~block_end)


@triton.jit
def _reduce_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, param_active, totals, REDUCE: tl.constexpr,
                  FLAGS: tl.constexpr, N_STATES: tl.constexpr, N_STATE_COLUMNS: tl.constexpr, N_INPUTS: tl.constexpr,
                  N_OUTPUTS: tl.constexpr, PER_ROW: tl.constexpr, PARAM_DTYPE: tl.constexpr,
                  STATE_DTYPE: tl.constexpr, QUANT: tl.constexpr, ALIGNED: tl.constexpr, AMP: tl.constexpr,
                  BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr, MASTER_BITS: tl.constexpr,
                  RESIDUAL_COLUMN: tl.constexpr):
    param, grad, states, scalars = _load_block(row_ptr, offsets, numel, scalars, inv_scale, param_active, N_STATES,
                                               N_STATE_COLUMNS, N_INPUTS, False, PARAM_DTYPE, STATE_DTYPE, QUANT,
                                               ALIGNED, AMP, MASKED, MASTER_BITS, RESIDUAL_COLUMN)
    terms = REDUCE(param, grad, states, scalars, hyper, FLAGS)
    sums = ()
    for j in tl.static_range(N_OUTPUTS):
        term = terms[j]
        if MASKED:
            term = tl.where(offsets < numel, term, 0.0)  # the padding loaded as 0 need not map to 0
        if PER_ROW and j == N_OUTPUTS - 1:
            out_ptr = tl.load(row_ptr + FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_INPUTS + j).to(tl.pointer_type(tl.float32))
            _sum_per_row(row_ptr, out_ptr, offsets, numel, term, BLOCK_SIZE)
            sums = sums + (totals[j],)
        else:
            sums = sums + (totals[j] + tl.sum(term, axis=0),)
    return sums


@triton.jit
def multi_tensor_reduce_kernel(
    table_ptr, chunk_tensor_ptr, chunk_index_ptr, hyper, inv_scale_ptr, found_inf_ptr,
    REDUCE: tl.constexpr, PARAM_ACTIVE: tl.constexpr, FLAGS: tl.constexpr, N_STATES: tl.constexpr,
    N_STATE_COLUMNS: tl.constexpr, N_SCALARS: tl.constexpr, N_OUTPUTS: tl.constexpr, PER_ROW: tl.constexpr,
    PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, QUANT: tl.constexpr, ALIGNED: tl.constexpr,
    AMP: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr, MASTER_BITS: tl.constexpr,
):
    """Output j of each tensor += the sum over its elements of REDUCE(...)[j], into the fp32 value its
    (N_SCALARS − N_OUTPUTS + j)-th scalar points to (per row for the last one with PER_ROW); with AMP,
    of the unscaled gradients, and nothing at all if found_inf ≠ 0. One atomic per output and program.
    With MASTER_BITS, REDUCE sees θ's fp32 master, as the update does."""
    N_INPUTS: tl.constexpr = N_SCALARS - N_OUTPUTS
    RESIDUAL_COLUMN: tl.constexpr = FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_SCALARS
    tensor, row_ptr, numel, chunk, scalars = _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr,
                                                          N_STATE_COLUMNS, N_INPUTS, N_SCALARS, MASTER_BITS)
    active, inv_scale = _amp_scaling(inv_scale_ptr, found_inf_ptr, AMP)
    param_active = _param_active(scalars, hyper, FLAGS, PARAM_ACTIVE)
    if active:
        totals = ()
        for j in tl.static_range(N_OUTPUTS):
            totals = totals + (0.0,)
        for block in range(BLOCKS_PER_PROGRAM):
            start = (chunk * BLOCKS_PER_PROGRAM + block) * BLOCK_SIZE
            offsets = start + tl.arange(0, BLOCK_SIZE)
            if start + BLOCK_SIZE <= numel:
                totals = _reduce_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, param_active, totals, REDUCE,
                                       FLAGS, N_STATES, N_STATE_COLUMNS, N_INPUTS, N_OUTPUTS, PER_ROW, PARAM_DTYPE,
                                       STATE_DTYPE, QUANT, ALIGNED, AMP, BLOCK_SIZE, MASKED=False,
                                       MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN)
            elif start < numel:
                totals = _reduce_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, param_active, totals, REDUCE,
                                       FLAGS, N_STATES, N_STATE_COLUMNS, N_INPUTS, N_OUTPUTS, PER_ROW, PARAM_DTYPE,
                                       STATE_DTYPE, QUANT, ALIGNED, AMP, BLOCK_SIZE, MASKED=True,
                                       MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN)
        for j in tl.static_range(N_OUTPUTS - PER_ROW):
            out_ptr = tl.load(row_ptr + FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_INPUTS + j).to(tl.pointer_type(tl.float32))
            tl.atomic_add(out_ptr, totals[j])  # the order of the additions varies on a GPU


@triton.jit
def _write_pointers_kernel(table_ptr, row_width, column, first_row, tensors, COUNT: tl.constexpr):
    """table[first_row + i, column] = the address of tensors[i]: a table column rewritten on the device,
    from kernel arguments, so that a CUDA graph captures no copy from the host."""
    for i in tl.static_range(COUNT):
        tl.store(table_ptr + (first_row + i) * row_width + column, tensors[i].to(tl.int64))


_TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
MASTER_BITS = {None: 0, torch.int16: 32, torch.int8: 24}  # θ's residual's dtype -> the master's width
_STATE_DTYPES = {**_TRITON_DTYPES, torch.int8: tl.int8, torch.uint8: tl.uint8}  # codes, with QuantizedStates


class QuantizedStates(NamedTuple):
    """How a launch's quantized states are coded (the QUANT constexpr): bits per code (8: int8 codes
    laid out as the param; 4: two per uint8, flat in the param's memory order), elements per fp32
    scale, and per state (in the kernel's order) whether its codes are unsigned and stochastic."""

    BITS: int
    BLOCK: int
    UNSIGNED: tuple
    STOCHASTIC: tuple


@dataclass(frozen=True)
class TensorSlots:
    """One parameter as the kernel sees it: param, grad, its state tensors and its fp32 scalars."""

    param: torch.Tensor
    grad: torch.Tensor
    states: tuple[torch.Tensor, ...] = ()
    scalars: tuple[torch.Tensor, ...] = ()
    flags: tuple = ()  # (name, value) pairs: FLAGS fields of this tensor alone (FIRST_STEP: a state's first step)
    # When > 0, the last scalar holds one value per row of row_length contiguous elements (an
    # embedding table's per-row lr), which the kernel gathers per element.
    row_length: int = 0
    # Split master weights (kernels.master_weights): θ's int16 (32-bit master) or int8 (24-bit) residual.
    residual: Optional[torch.Tensor] = None
    scales: tuple[torch.Tensor, ...] = ()  # quantized states: each state's fp32 scales, one per quantization block

    def tensors(self):
        return (self.param, self.grad, *self.states)

    def launch_key(self):
        """Tensors that share this key share one launch."""
        tensors = self.tensors() if self.residual is None else (*self.tensors(), self.residual)
        aligned = all(t.data_ptr() % ALIGNMENT_BYTES == 0 for t in tensors)
        state_dtype = self.states[0].dtype if self.states else self.param.dtype
        return (self.param.device, self.param.dtype, state_dtype, aligned, self.flags, self.row_length > 0,
                MASTER_BITS[None if self.residual is None else self.residual.dtype])


def walkable(tensor: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether the kernel can walk ``tensor`` element by element beside ``like``: the same shape and
    strides, dense and non-overlapping (contiguous, channels_last, a transposed matrix...), so that the
    i-th element in memory of each is the same element of the param."""
    return tensor.shape == like.shape and tensor.stride() == like.stride() and _dense(tensor)


def _dense(tensor: torch.Tensor) -> bool:
    """No gaps and no overlaps: the strides, sorted, are those of some order of the dimensions."""
    if tensor.numel() == 0:
        return True
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def check_slots(slots: Sequence[TensorSlots], quantization: Optional[QuantizedStates] = None):
    """What a kernel needs of its tensors; raised before any launch so nothing is half-updated."""
    for i, s in enumerate(slots):
        _check_quantized(i, s, quantization)
        if s.param.dtype not in _TRITON_DTYPES:
            raise TypeError(f"tensor {i}: the Triton kernels support {list(_TRITON_DTYPES)}, not {s.param.dtype}; "
                            "use impl='reference' for other dtypes")
        walked = s.tensors() if quantization is None or quantization.BITS == 8 else (s.param, s.grad)
        for name, t in zip(("param", "grad", *("state",) * len(s.states)), walked):
            if not walkable(t, s.param):
                raise ValueError(f"tensor {i}: the {name} (shape {tuple(t.shape)}, strides {t.stride()}) is not laid "
                                 f"out as its param (shape {tuple(s.param.shape)}, strides {s.param.stride()}) in one "
                                 "dense block; the fused kernel walks memory linearly. Make them dense with the same "
                                 "strides, or use impl='reference'")
            if t.device != s.param.device:
                raise ValueError(f"tensor {i}: the {name} is on {t.device}, its param on {s.param.device}")
        if s.residual is not None and (s.residual.dtype not in MASTER_BITS or not walkable(s.residual, s.param)
                                       or s.residual.device != s.param.device
                                       or s.param.dtype not in (torch.bfloat16, torch.float16)):
            raise ValueError(f"tensor {i}: a master residual must be int16 or int8, laid out as its bf16 or fp16 param "
                             f"on its device; got {s.residual.dtype} {tuple(s.residual.shape)} strides "
                             f"{s.residual.stride()} on {s.residual.device} for a {s.param.dtype} param")
        if s.grad.dtype != s.param.dtype:
            raise ValueError(f"tensor {i}: the grad ({s.grad.dtype}) does not match its param ({s.param.dtype})")
        if len({t.dtype for t in s.states}) > 1:
            raise ValueError(f"tensor {i}: all state tensors of one param must share a dtype")
        rows = s.param.numel() // s.row_length if s.row_length else 1
        for j, t in enumerate(s.scalars):
            expected = rows if j == len(s.scalars) - 1 else 1
            if t.dtype != torch.float32 or t.numel() != expected or t.device != s.param.device:
                raise ValueError(f"tensor {i}: scalar {j} must be an fp32 tensor of {expected} element(s) on "
                                 f"{s.param.device}, got {t.dtype} with {t.numel()} elements on {t.device}")
        if s.row_length and (s.param.numel() % s.row_length or not s.scalars):
            raise ValueError(f"tensor {i}: row_length={s.row_length} must divide its {s.param.numel()} elements, "
                             "and the last scalar holds the per-row values")


def _check_quantized(i: int, s: TensorSlots, quantization: Optional[QuantizedStates]):
    """Quantized states come with one dense fp32 scale tensor each, one value per quantization block."""
    if quantization is None:
        if s.scales or any(t.dtype in (torch.int8, torch.uint8) for t in s.states):
            raise ValueError(f"tensor {i}: quantized states and scales need the launch's QuantizedStates")
        return
    if len(s.scales) != len(s.states) or len(quantization.UNSIGNED) != len(s.states):
        raise ValueError(f"tensor {i}: {len(s.states)} quantized states need as many scale tensors and schemes, got "
                         f"{len(s.scales)} and {len(quantization.UNSIGNED)}")
    blocks = triton.cdiv(s.param.numel(), quantization.BLOCK)
    for j, (state, scale) in enumerate(zip(s.states, s.scales)):
        if quantization.BITS == 8 and state.dtype != torch.int8:
            raise ValueError(f"tensor {i}: state {j} is {state.dtype}; 8-bit states are int8 codes")
        packed = triton.cdiv(s.param.numel(), 2)
        if quantization.BITS == 4 and (state.dtype != torch.uint8 or state.numel() != packed
                                       or not state.is_contiguous() or state.device != s.param.device):
            raise ValueError(f"tensor {i}: state {j} must be {packed} contiguous uint8 on {s.param.device} (two "
                             f"4-bit codes a byte), got {state.dtype} with {state.numel()} elements on {state.device}")
        if scale.dtype != torch.float32 or scale.numel() != blocks or not scale.is_contiguous() \
                or scale.device != s.param.device:
            raise ValueError(f"tensor {i}: the scales of state {j} must be a contiguous fp32 tensor of {blocks} "
                             f"elements (one per {quantization.BLOCK}) on {s.param.device}, got {scale.dtype} with "
                             f"{scale.numel()} elements on {scale.device}")


def capturing(device: torch.device) -> bool:
    """Whether work on ``device`` is being recorded into a CUDA graph (torch.cuda.graph) right now."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def on_device(value: torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    """``value`` moved to ``device``; under a CUDA graph capture it must already be there, since a copy
    from elsewhere would be frozen into the graph at its captured value."""
    if value.device != device and capturing(device):
        raise ValueError(f"{name} is a tensor on {value.device} while a CUDA graph of the step is captured on "
                         f"{device}; put it on {device} (e.g. lr=torch.tensor(1e-3, device='{device}')) so that "
                         "each replay reads its current value")
    return value.to(device, non_blocking=True)


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host-built table on ``device`` without a host sync (pinned memory, an asynchronous copy).
    Only ever called outside a capture: a launch is built before the step that captures it."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


_chunk_maps: dict = {}


def _chunk_map(numels: tuple[int, ...], chunk_size: int, device: torch.device):
    """For each program, which tensor and which chunk of it: cached, sizes rarely change."""
    key = (numels, chunk_size, device)
    if key not in _chunk_maps:
        chunks = torch.tensor([triton.cdiv(n, chunk_size) for n in numels])
        chunk_tensor = torch.repeat_interleave(torch.arange(len(numels)), chunks)
        first_chunk = torch.cumsum(chunks, 0) - chunks
        chunk_index = torch.arange(len(chunk_tensor)) - first_chunk[chunk_tensor]
        _chunk_maps[key] = (_upload(chunk_tensor.to(torch.int32), device), _upload(chunk_index.to(torch.int32), device))
    return _chunk_maps[key]


# Launches a CUDA graph has recorded: the graph reads their tables again at every replay, so they are
# kept for the life of the process (a few KiB each), whatever becomes of the plan that made them.
_captured_launches: list = []
POINTERS_PER_WRITE = 32  # tensors per _write_pointers_kernel launch: 256 bytes of kernel arguments


class Launch:
    """One launch, prepared: tensors that share a launch key, checked, their pointer table and the
    program → (tensor, chunk) map on the device, the launch configuration chosen. ``set_grads`` puts a
    step's gradients in; ``update`` and ``reduce`` launch."""

    def __init__(self, slots: Sequence[TensorSlots], rule_name: str, quantization: Optional[QuantizedStates] = None):
        first = slots[0]
        device, param_dtype, state_dtype, aligned, tensor_flags, per_row, master_bits = first.launch_key()
        self.device, self.tensor_flags = device, dict(tensor_flags)
        numels = tuple(s.param.numel() for s in slots)
        n_states, n_scalars = len(first.states), len(first.scalars)
        if any(len(s.states) != n_states or len(s.scalars) != n_scalars for s in slots):
            raise ValueError("every tensor of one launch needs the same number of states and scalars")
        config = launch_config(rule_name, param_dtype, max(numels), device)
        if quantization is not None and config.block_size % quantization.BLOCK:
            raise ValueError(f"{rule_name}: a launch block of {config.block_size} elements is not a multiple of the "
                             f"quantization block ({quantization.BLOCK}): a block's scale would straddle two "
                             "programs. Use a launch configuration whose block_size is a multiple of it")
        self.chunk_tensor, self.chunk_index = _chunk_map(numels, config.block_size * config.blocks_per_program, device)
        self.grid = (len(self.chunk_tensor),)
        rows = [[s.param.numel(), max(s.row_length, 1)] + [t.data_ptr() for t in (*s.tensors(), *s.scales, *s.scalars)]
                + ([] if s.residual is None else [s.residual.data_ptr()]) for s in slots]
        self.row_width = len(rows[0])
        host_table = torch.tensor(rows, dtype=torch.int64)
        self.table = _upload(host_table, device)
        self._host_view = host_table.numpy() if device.type == "cpu" else None  # the table itself, on a CPU
        self.grad_pointers = [s.grad.data_ptr() for s in slots]
        self.constants = dict(
            N_STATES=n_states, N_STATE_COLUMNS=n_states * (1 + (quantization is not None)), N_SCALARS=n_scalars,
            PER_ROW=int(per_row), PARAM_DTYPE=_TRITON_DTYPES[param_dtype], STATE_DTYPE=_STATE_DTYPES[state_dtype],
            QUANT=quantization, ALIGNED=aligned, BLOCK_SIZE=config.block_size,
            BLOCKS_PER_PROGRAM=config.blocks_per_program, MASTER_BITS=master_bits, num_warps=config.num_warps,
            num_stages=config.num_stages,
            # Fused multiply-adds, as triton 3.6 to 3.9 do by default; named so that triton 3.10's new
            # default (off) does not silently change the rounding.
            enable_fp_fusion=True,
        )

    def set_grads(self, grads: Sequence[torch.Tensor], pointers: Sequence[int]) -> None:
        """The table's gradient column, when the gradients moved: from the host in eager mode (on the
        CPU the table is written in place), by kernel arguments while a CUDA graph is captured."""
        if pointers == self.grad_pointers:
            return
        if capturing(self.device):
            for first in range(0, len(grads), POINTERS_PER_WRITE):
                part = tuple(grads[first: first + POINTERS_PER_WRITE])
                _write_pointers_kernel[(1,)](self.table, self.row_width, GRAD_COLUMN.value, first, part,
                                             COUNT=len(part), enable_fp_fusion=True)  # as every launch here
        elif self._host_view is not None:
            self._host_view[:, GRAD_COLUMN.value] = pointers  # no torch op: nothing a step's trace would see
        else:
            column = torch.tensor(pointers, dtype=torch.int64).pin_memory()
            self.table[:, GRAD_COLUMN.value].copy_(column, non_blocking=True)
        self.grad_pointers = list(pointers)

    def _arguments(self, hyper: tuple, amp: Optional[tuple]) -> tuple:
        if capturing(self.device) and self not in _captured_launches:
            _captured_launches.append(self)
        if any(isinstance(h, torch.Tensor) for h in hyper):  # hyper: the rule's named tuple, kept as such
            hyper = type(hyper)(*(on_device(h, self.device, "a hyperparameter") if isinstance(h, torch.Tensor) else h
                                  for h in hyper))
        if amp is None:
            return hyper, None, None, False
        inv_scale, found_inf = (on_device(t, self.device, f"GradScaler's {name}") for t, name in
                                zip(amp, ("scale", "found_inf")))
        return hyper, inv_scale, found_inf, True

    def _flags(self, flags):
        """The rule's FLAGS with this launch's own (a state's first step) set by name."""
        return flags._replace(**self.tensor_flags) if self.tensor_flags else flags

    def update(self, update, param_active, hyper: tuple, flags: tuple, seed: Optional[torch.Tensor] = None,
               amp: Optional[tuple] = None, quantization_count: Optional[torch.Tensor] = None) -> None:
        """The rule's ``update`` over every tensor. ``seed``: None rounds to nearest; a 0-d int64 tensor
        on the device makes 16-bit stores stochastic, and counts the launch. ``amp``: None, or
        GradScaler's (inverse scale, found_inf) as one-element fp32 tensors. ``quantization_count``
        (quantized states): the 0-d int64 tensor that keys the stochastic rounding of codes."""
        hyper, inv_scale, found_inf, use_amp = self._arguments(hyper, amp)
        if quantization_count is not None:
            quantization_count = on_device(quantization_count, self.device, "the quantization count")
        if seed is not None:
            seed.add_(1)  # each launch draws other random bits (the low 32 bits count launches)
        multi_tensor_update_kernel[self.grid](
            self.table, self.chunk_tensor, self.chunk_index, hyper, seed, inv_scale, found_inf, quantization_count,
            UPDATE=update,
            PARAM_ACTIVE=param_active, FLAGS=self._flags(flags), STOCHASTIC=seed is not None, AMP=use_amp,
            **self.constants)

    def reduce(self, reduce, param_active, n_outputs: int, hyper: tuple, flags: tuple,
               amp: Optional[tuple] = None) -> None:
        """Adds each tensor's sums of ``reduce``'s terms into its last ``n_outputs`` scalars."""
        hyper, inv_scale, found_inf, use_amp = self._arguments(hyper, amp)
        multi_tensor_reduce_kernel[self.grid](
            self.table, self.chunk_tensor, self.chunk_index, hyper, inv_scale, found_inf, REDUCE=reduce,
            PARAM_ACTIVE=param_active, FLAGS=self._flags(flags), N_OUTPUTS=n_outputs, AMP=use_amp,
            **self.constants)


def prepare_launches(slots: Sequence[TensorSlots], rule_name: str,
                     quantization: Optional[QuantizedStates] = None) -> list[tuple[list[int], Launch]]:
    """The launches of ``slots``, one per launch key (device, dtypes, 16-byte alignment, a tensor's
    flags, per-row scalars): (the indices into ``slots`` it covers, the Launch). Checked first; empty
    tensors get no launch. ``quantization``: how quantized states are coded, None for float states."""
    check_slots(slots, quantization)
    indices: dict = {}
    for i, s in enumerate(slots):
        if s.param.numel() > 0:
            indices.setdefault(s.launch_key(), []).append(i)
    return [(members, Launch([slots[i] for i in members], rule_name, quantization)) for members in indices.values()]


__all__ = ["INTERPRETED", "Launch", "QuantizedStates", "TensorSlots", "capturing", "check_slots", "on_device",
           "prepare_launches", "walkable"]
