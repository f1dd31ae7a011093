"""The device side of the one multi-tensor launcher (``kernels.launcher``): the update and reduce
kernels that walk its table of tensors, and what they do around a rule's math.

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
- With ``TensorSlots.factors`` (FACTORED), two more scalars after those, gathered per element: a
  stack of matrices' per-row and per-column values (Adafactor's row and column statistics), so an
  update or a reduce reads r[i] and c[j] at element (i, j) from O(n + m) values.
- ``PARAM_ACTIVE``, optional, ``(scalars, hyper, FLAGS) -> bool`` per tensor: where it is False θ is
  neither read nor written (Tiger's micro-steps that do not move θ).

``multi_tensor_reduce_kernel`` walks the same table with a ``reduce`` function of the same arguments
that returns a tuple of fp32 term blocks, one per output; output j of a tensor is summed into the
fp32 value its j-th trailing scalar points to (the last one per row, with ``row_length``). So a
rule's per-tensor norms, NaN counts and dot products take one launch, with no host sync.

What the kernels do besides the rule's math: walk the launcher's table of pointers and sizes (one row
per tensor) and its map from program to (tensor, chunk), int64 offsets, the masked tail, the fp32
upcast and the store, rounded to nearest or stochastically (``kernels.rounding``).
"""
import triton
import triton.language as tl

from fusedoptim.kernels.master_weights import rebuild_master, split_master
from fusedoptim.kernels.quantization import load_dequantized, random_key, store_quantized
from fusedoptim.kernels.rounding import round_to_storage

ALIGNMENT_BYTES = 16  # a 16-byte aligned tensor can be read with 128-bit vector loads


@triton.jit
def _load(base_ptr, offsets, numel, MASKED: tl.constexpr):
    # Full blocks are loaded without a mask so the compiler can use vector loads; only the tail of
    # each tensor pays for the mask.
    if MASKED:
        return tl.load(base_ptr + offsets, mask=offsets < numel, other=0.0).to(tl.float32)
    else:
        return tl.load(base_ptr + offsets).to(tl.float32)


# One row of the pointer table per tensor, int64 each: [numel, row_length, first, θ, g, states..., scalars...];
# with quantized states, [..., codes..., scales..., scalars...]: N_STATE_COLUMNS is twice N_STATES; with
# split master weights (kernels.master_weights), θ's residual last. ``first`` is the index of the tensor's
# first element in its whole param (an FSDP2 shard's offset, else 0): the codes' random draws are keyed
# by the whole param's index, so that they do not depend on where a shard starts.
FIRST_COLUMN = tl.constexpr(2)
PARAM_COLUMN, GRAD_COLUMN, FIRST_STATE_COLUMN = tl.constexpr(3), tl.constexpr(4), tl.constexpr(5)
# With FACTORED, three columns after θ's residual (or after the scalars): the addresses of a factored
# tensor's per-row and per-column values, and its matrices' size (``_gather_factors``).
FACTORS_COLUMNS = tl.constexpr(3)
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
                AMP: tl.constexpr, MASKED: tl.constexpr, MASTER_BITS: tl.constexpr, RESIDUAL_COLUMN: tl.constexpr,
                FACTORED: tl.constexpr):
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
    if FACTORED:
        scalars = scalars + _gather_factors(row_ptr, offsets, RESIDUAL_COLUMN + (MASTER_BITS != 0), MASKED)
    return param, grad, states, scalars


@triton.jit
def _gather_factors(row_ptr, offsets, FACTORS_COLUMN: tl.constexpr, MASKED: tl.constexpr):
    """A factored tensor's per-row and per-column values at each of its elements. The tensor is a
    stack of matrices of matrix_numel elements each, in rows of row_length: row r of the stack reads
    rows[r], column j of matrix b reads columns[b·row_length + j]. O(n + m) values: they stay in cache."""
    row_length = tl.load(row_ptr + 1)
    rows_ptr = tl.load(row_ptr + FACTORS_COLUMN).to(tl.pointer_type(tl.float32))
    columns_ptr = tl.load(row_ptr + FACTORS_COLUMN + 1).to(tl.pointer_type(tl.float32))
    matrix_numel = tl.load(row_ptr + FACTORS_COLUMN + 2)
    numel = tl.load(row_ptr)
    columns = (offsets // matrix_numel) * row_length + offsets % row_length
    return (_load(rows_ptr, offsets // row_length, numel // row_length, MASKED),
            _load(columns_ptr, columns, numel // matrix_numel * row_length, MASKED))


@triton.jit
def _update_block(row_ptr, start, offsets, numel, scalars, inv_scale, hyper, seed, stream, quantization_count, param_active,
                  UPDATE: tl.constexpr, FLAGS: tl.constexpr, N_STATES: tl.constexpr, N_STATE_COLUMNS: tl.constexpr,
                  N_INPUTS: tl.constexpr, PER_ROW: tl.constexpr, PARAM_DTYPE: tl.constexpr,
                  STATE_DTYPE: tl.constexpr, QUANT: tl.constexpr, ALIGNED: tl.constexpr, STOCHASTIC: tl.constexpr,
                  AMP: tl.constexpr, BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr, MASTER_BITS: tl.constexpr,
                  RESIDUAL_COLUMN: tl.constexpr, FACTORED: tl.constexpr):
    param, grad, states, scalars = _load_block(row_ptr, offsets, numel, scalars, inv_scale, param_active, N_STATES,
                                               N_STATE_COLUMNS, N_INPUTS, PER_ROW, PARAM_DTYPE, STATE_DTYPE, QUANT,
                                               ALIGNED, AMP, MASKED, MASTER_BITS, RESIDUAL_COLUMN, FACTORED)
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
                            key, tl.load(row_ptr + FIRST_COLUMN), QUANT.BITS, QUANT.BLOCK, BLOCK_SIZE, MASKED)
        else:
            _store(state_ptr, offsets, numel, states[i], MASKED, STOCHASTIC, seed, stream, i + 1, STORES,
                   BLOCK_SIZE)


@triton.jit
def _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr, N_STATE_COLUMNS: tl.constexpr,
                 N_INPUTS: tl.constexpr, N_SCALARS: tl.constexpr, MASTER_BITS: tl.constexpr,
                 FACTORED: tl.constexpr):
    """This program's tensor (its index in the launch), its row of the pointer table, its size, its
    chunk, and the values of its first N_INPUTS per-tensor scalars."""
    program = tl.program_id(0)
    tensor = tl.load(chunk_tensor_ptr + program).to(tl.int64)
    chunk = tl.load(chunk_index_ptr + program).to(tl.int64)  # int64: tensors may pass 2^31 elements
    row_ptr = table_ptr + tensor * (FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_SCALARS + (MASTER_BITS != 0)
                                    + FACTORS_COLUMNS * FACTORED)
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
    FACTORED: tl.constexpr,
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
                                                          N_STATE_COLUMNS, N_INPUTS, N_SCALARS, MASTER_BITS, FACTORED)
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
                              MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN, FACTORED=FACTORED)
            elif start < numel:
                _update_block(row_ptr, start, offsets, numel, scalars, inv_scale, hyper, seed, stream, quantization_count,
                              param_active, UPDATE, FLAGS, N_STATES, N_STATE_COLUMNS, N_INPUTS, PER_ROW, PARAM_DTYPE,
                              STATE_DTYPE, QUANT, ALIGNED, STOCHASTIC, AMP, BLOCK_SIZE, MASKED=True,
                              MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN, FACTORED=FACTORED)


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
                  RESIDUAL_COLUMN: tl.constexpr, FACTORED: tl.constexpr):
    param, grad, states, scalars = _load_block(row_ptr, offsets, numel, scalars, inv_scale, param_active, N_STATES,
                                               N_STATE_COLUMNS, N_INPUTS, False, PARAM_DTYPE, STATE_DTYPE, QUANT,
                                               ALIGNED, AMP, MASKED, MASTER_BITS, RESIDUAL_COLUMN, FACTORED)
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
    FACTORED: tl.constexpr,
):
    """Output j of each tensor += the sum over its elements of REDUCE(...)[j], into the fp32 value its
    (N_SCALARS − N_OUTPUTS + j)-th scalar points to (per row for the last one with PER_ROW); with AMP,
    of the unscaled gradients, and nothing at all if found_inf ≠ 0. One atomic per output and program.
    With MASTER_BITS, REDUCE sees θ's fp32 master, as the update does."""
    N_INPUTS: tl.constexpr = N_SCALARS - N_OUTPUTS
    RESIDUAL_COLUMN: tl.constexpr = FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_SCALARS
    tensor, row_ptr, numel, chunk, scalars = _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr,
                                                          N_STATE_COLUMNS, N_INPUTS, N_SCALARS, MASTER_BITS, FACTORED)
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
                                       MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN, FACTORED=FACTORED)
            elif start < numel:
                totals = _reduce_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, param_active, totals, REDUCE,
                                       FLAGS, N_STATES, N_STATE_COLUMNS, N_INPUTS, N_OUTPUTS, PER_ROW, PARAM_DTYPE,
                                       STATE_DTYPE, QUANT, ALIGNED, AMP, BLOCK_SIZE, MASKED=True,
                                       MASTER_BITS=MASTER_BITS, RESIDUAL_COLUMN=RESIDUAL_COLUMN, FACTORED=FACTORED)
        for j in tl.static_range(N_OUTPUTS - PER_ROW):
            out_ptr = tl.load(row_ptr + FIRST_STATE_COLUMN + N_STATE_COLUMNS + N_INPUTS + j).to(tl.pointer_type(tl.float32))
            tl.atomic_add(out_ptr, totals[j])  # the order of the additions varies on a GPU


@triton.jit
def write_pointers_kernel(table_ptr, row_width, column, first_row, tensors, COUNT: tl.constexpr):
    """table[first_row + i, column] = the address of tensors[i]: a table column rewritten on the device,
    from kernel arguments, so that a CUDA graph captures no copy from the host."""
    for i in tl.static_range(COUNT):
        tl.store(table_ptr + (first_row + i) * row_width + column, tensors[i].to(tl.int64))
