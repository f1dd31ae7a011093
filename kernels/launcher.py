"""The one multi-tensor launcher that every elementwise update rule goes through.

A rule contributes only its math, a ``@triton.jit`` function with this signature::

    update(param, grad, states, scalars, hyper, FLAGS) -> (param, states)

- ``param``, ``grad`` and each entry of the tuple ``states`` are fp32 blocks, already loaded and
  upcast from their storage dtype; the launcher rounds what the rule returns back to storage.
- ``scalars`` is a tuple of fp32 values, one per tensor (the step counter, Tiger's lr multiplier...);
  with ``TensorSlots.row_length`` the last one is a block, one value per row (Tiger's embeddings).
- ``hyper`` is the tuple of group hyperparameters exactly as the rule's host code passed it: Python
  floats, or 0-d device tensors that ``kernels.elementwise.hyperparameter()`` reads. Neither
  recompiles when its value changes (Triton specialises integers, not floats; a tensor is a pointer).
- ``FLAGS`` is a tuple of compile-time options (amsgrad, maximize, ...): one compiled variant each.
  A tensor's own flags (``TensorSlots.flags``: a state's first step) follow the rule's.

``multi_tensor_reduce`` walks the same table with a ``reduce`` function of the same arguments that
returns fp32 terms, and adds their sum to a device scalar: a group-wide dot product or norm with no
host sync.

Everything else belongs here: the table of pointers and sizes (one row per tensor), the map from
program to (tensor, chunk) that torch's multi_tensor_apply also builds, int64 offsets, the masked
tail, the fp32 upcast and the store, rounded to nearest or stochastically (``kernels.rounding``). One
launch serves every tensor that shares device and dtypes.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from autotune import launch_config
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


# One row of the pointer table per tensor, int64 each: [numel, row_length, θ, g, states..., scalars...].
PARAM_COLUMN, GRAD_COLUMN, FIRST_STATE_COLUMN = tl.constexpr(2), tl.constexpr(3), tl.constexpr(4)
RANDOM_STREAM = tl.constexpr(2**40)  # Philox counter: (tensor, column) above bit 40, the element offset below


@triton.jit
def _store(base_ptr, offsets, numel, value, MASKED: tl.constexpr, STOCHASTIC: tl.constexpr, seed, stream):
    value = round_to_storage(value, base_ptr.dtype.element_ty, STOCHASTIC, seed, stream + offsets)
    if MASKED:
        tl.store(base_ptr + offsets, value, mask=offsets < numel)
    else:
        tl.store(base_ptr + offsets, value)


@triton.jit
def _pointer(row_ptr, column, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    pointer = tl.load(row_ptr + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _load_block(row_ptr, offsets, numel, scalars, inv_scale, N_STATES: tl.constexpr, N_SCALARS: tl.constexpr,
                PER_ROW: tl.constexpr, PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr,
                ALIGNED: tl.constexpr, AMP: tl.constexpr, MASKED: tl.constexpr):
    param = _load(_pointer(row_ptr, PARAM_COLUMN, PARAM_DTYPE, ALIGNED), offsets, numel, MASKED)
    grad = _load(_pointer(row_ptr, GRAD_COLUMN, PARAM_DTYPE, ALIGNED), offsets, numel, MASKED)
    if AMP:
        grad = grad * inv_scale  # GradScaler's loss scale undone in fp32, in registers: no pass over g
    states = ()
    for i in tl.static_range(N_STATES):
        states = states + (_load(_pointer(row_ptr, FIRST_STATE_COLUMN + i, STATE_DTYPE, ALIGNED), offsets, numel, MASKED),)
    if PER_ROW:
        # The last scalar holds one value per row of row_length elements (an embedding table's
        # per-row lr): gathered per element, from a vector small enough to stay in cache.
        row_length = tl.load(row_ptr + 1)
        values = tl.load(row_ptr + FIRST_STATE_COLUMN + N_STATES + N_SCALARS).to(tl.pointer_type(tl.float32))
        scalars = scalars + (_load(values, offsets // row_length, tl.load(row_ptr) // row_length, MASKED),)
    return param, grad, states, scalars


@triton.jit
def _update_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, seed, stream, UPDATE: tl.constexpr,
                  FLAGS: tl.constexpr, N_STATES: tl.constexpr, N_SCALARS: tl.constexpr, PER_ROW: tl.constexpr,
                  PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                  STOCHASTIC: tl.constexpr, AMP: tl.constexpr, MASKED: tl.constexpr):
    param, grad, states, scalars = _load_block(row_ptr, offsets, numel, scalars, inv_scale, N_STATES, N_SCALARS,
                                               PER_ROW, PARAM_DTYPE, STATE_DTYPE, ALIGNED, AMP, MASKED)
    param, states = UPDATE(param, grad, states, scalars, hyper, FLAGS)
    _store(_pointer(row_ptr, PARAM_COLUMN, PARAM_DTYPE, ALIGNED), offsets, numel, param, MASKED, STOCHASTIC,
           seed, stream)
    for i in tl.static_range(N_STATES):
        _store(_pointer(row_ptr, FIRST_STATE_COLUMN + i, STATE_DTYPE, ALIGNED), offsets, numel, states[i], MASKED,
               STOCHASTIC, seed, stream + (i + 1) * RANDOM_STREAM)


@triton.jit
def _reduce_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, REDUCE: tl.constexpr, FLAGS: tl.constexpr,
                  N_STATES: tl.constexpr, N_SCALARS: tl.constexpr, PER_ROW: tl.constexpr,
                  PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, AMP: tl.constexpr,
                  MASKED: tl.constexpr):
    param, grad, states, scalars = _load_block(row_ptr, offsets, numel, scalars, inv_scale, N_STATES, N_SCALARS,
                                               PER_ROW, PARAM_DTYPE, STATE_DTYPE, ALIGNED, AMP, MASKED)
    terms = REDUCE(param, grad, states, scalars, hyper, FLAGS)
    if MASKED:
        terms = tl.where(offsets < numel, terms, 0.0)  # the padding loaded as 0 need not map to 0
    return tl.sum(terms, axis=0)


@triton.jit
def _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr, N_STATES: tl.constexpr, N_SCALARS: tl.constexpr,
                 PER_ROW: tl.constexpr):
    """This program's tensor (its index in the launch), its row of the pointer table, its size, its
    chunk, and its per-tensor scalars."""
    program = tl.program_id(0)
    tensor = tl.load(chunk_tensor_ptr + program).to(tl.int64)
    chunk = tl.load(chunk_index_ptr + program).to(tl.int64)  # int64: tensors may pass 2^31 elements
    row_ptr = table_ptr + tensor * (FIRST_STATE_COLUMN + N_STATES + N_SCALARS + PER_ROW)
    scalars = ()
    for i in tl.static_range(N_SCALARS):
        scalar_ptr = tl.load(row_ptr + FIRST_STATE_COLUMN + N_STATES + i).to(tl.pointer_type(tl.float32))
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
    table_ptr, chunk_tensor_ptr, chunk_index_ptr, hyper, seed_ptr, inv_scale_ptr, found_inf_ptr,
    UPDATE: tl.constexpr, FLAGS: tl.constexpr, N_STATES: tl.constexpr, N_SCALARS: tl.constexpr,
    PER_ROW: tl.constexpr, PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
    STOCHASTIC: tl.constexpr, AMP: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr,
):
    """Every tensor's chunk of the update. With STOCHASTIC, 16-bit stores round stochastically with
    the seed at seed_ptr; each (tensor, column) of the launch draws its own Philox stream. With AMP,
    gradients are unscaled by the value at inv_scale_ptr, and nothing is written if found_inf ≠ 0."""
    tensor, row_ptr, numel, chunk, scalars = _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr,
                                                          N_STATES, N_SCALARS, PER_ROW)
    seed = 0
    if STOCHASTIC:
        seed = tl.load(seed_ptr)
    active, inv_scale = _amp_scaling(inv_scale_ptr, found_inf_ptr, AMP)
    stream = tensor * 8 * RANDOM_STREAM  # columns 0 (θ) to 7 (states) of this tensor
    if active:
        for block in range(BLOCKS_PER_PROGRAM):
            start = (chunk * BLOCKS_PER_PROGRAM + block) * BLOCK_SIZE
            offsets = start + tl.arange(0, BLOCK_SIZE)
            if start + BLOCK_SIZE <= numel:
                _update_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, seed, stream, UPDATE, FLAGS,
                              N_STATES, N_SCALARS, PER_ROW, PARAM_DTYPE, STATE_DTYPE, ALIGNED, STOCHASTIC, AMP,
                              MASKED=False)
            elif start < numel:
                _update_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, seed, stream, UPDATE, FLAGS,
                              N_STATES, N_SCALARS, PER_ROW, PARAM_DTYPE, STATE_DTYPE, ALIGNED, STOCHASTIC, AMP,
                              MASKED=True)


@triton.jit
def multi_tensor_reduce_kernel(
    table_ptr, chunk_tensor_ptr, chunk_index_ptr, hyper, out_ptr, inv_scale_ptr, found_inf_ptr,
    REDUCE: tl.constexpr, FLAGS: tl.constexpr, N_STATES: tl.constexpr, N_SCALARS: tl.constexpr,
    PER_ROW: tl.constexpr, PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
    AMP: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr,
):
    """out += the sum over every element of every tensor of REDUCE(param, grad, states, ...); with
    AMP, of the unscaled gradients, and nothing at all if found_inf ≠ 0."""
    tensor, row_ptr, numel, chunk, scalars = _program_row(table_ptr, chunk_tensor_ptr, chunk_index_ptr,
                                                          N_STATES, N_SCALARS, PER_ROW)
    active, inv_scale = _amp_scaling(inv_scale_ptr, found_inf_ptr, AMP)
    if active:
        total = 0.0
        for block in range(BLOCKS_PER_PROGRAM):
            start = (chunk * BLOCKS_PER_PROGRAM + block) * BLOCK_SIZE
            offsets = start + tl.arange(0, BLOCK_SIZE)
            if start + BLOCK_SIZE <= numel:
                total += _reduce_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, REDUCE, FLAGS, N_STATES,
                                       N_SCALARS, PER_ROW, PARAM_DTYPE, STATE_DTYPE, ALIGNED, AMP, MASKED=False)
            elif start < numel:
                total += _reduce_block(row_ptr, offsets, numel, scalars, inv_scale, hyper, REDUCE, FLAGS, N_STATES,
                                       N_SCALARS, PER_ROW, PARAM_DTYPE, STATE_DTYPE, ALIGNED, AMP, MASKED=True)
        tl.atomic_add(out_ptr, total)  # one atomic per program; the order of the additions varies on a GPU


_TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@dataclass(frozen=True)
class TensorSlots:
    """One parameter as the kernel sees it: param, grad, its state tensors and its fp32 scalars."""

    param: torch.Tensor
    grad: torch.Tensor
    states: tuple[torch.Tensor, ...] = ()
    scalars: tuple[torch.Tensor, ...] = ()
    flags: tuple = ()  # compile-time flags of this tensor alone (a state's first step), after the rule's
    # When > 0, the last scalar holds one value per row of row_length contiguous elements (an
    # embedding table's per-row lr), which the kernel gathers per element.
    row_length: int = 0

    def tensors(self):
        return (self.param, self.grad, *self.states)

    def launch_key(self):
        """Tensors that share this key share one launch."""
        aligned = all(t.data_ptr() % ALIGNMENT_BYTES == 0 for t in self.tensors())
        state_dtype = self.states[0].dtype if self.states else self.param.dtype
        return (self.param.device, self.param.dtype, state_dtype, aligned, self.flags, self.row_length > 0)


_chunk_maps: dict = {}


def _chunk_map(numels: tuple[int, ...], chunk_size: int, device: torch.device):
    """For each program, which tensor and which chunk of it: cached, sizes rarely change."""
    key = (numels, chunk_size, device)
    if key not in _chunk_maps:
        chunks = torch.tensor([triton.cdiv(n, chunk_size) for n in numels])
        chunk_tensor = torch.repeat_interleave(torch.arange(len(numels)), chunks)
        first_chunk = torch.cumsum(chunks, 0) - chunks
        chunk_index = torch.arange(len(chunk_tensor)) - first_chunk[chunk_tensor]
        _chunk_maps[key] = (_to_device(chunk_tensor.to(torch.int32), device),
                            _to_device(chunk_index.to(torch.int32), device))
    return _chunk_maps[key]


def capturing(device: torch.device) -> bool:
    """Whether work on ``device`` is being recorded into a CUDA graph (torch.cuda.graph) right now."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# What a CUDA graph copies from the host: the graph reads each host table again at every replay, so
# neither it nor its device copy may ever be freed or reused. Kept for the life of the process (a few
# KiB per captured launch).
_captured_tables: list = []


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host-built table on ``device`` without a host sync, also while a CUDA graph is captured."""
    if capturing(device):
        # pin_memory() queries CUDA events, which a capture forbids; a non-blocking copy from pageable
        # memory becomes one memcpy node of the graph, which reads ``host`` at every replay.
        table = host.to(device, non_blocking=True)
        _captured_tables.append((host, table))
        return table
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _pointer_table(slots: Sequence[TensorSlots], device: torch.device) -> torch.Tensor:
    rows = [[s.param.numel(), max(s.row_length, 1)] + [t.data_ptr() for t in (*s.tensors(), *s.scalars)] for s in slots]
    return _to_device(torch.tensor(rows, dtype=torch.int64), device)


def on_device(value: torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    """``value`` moved to ``device``; under a CUDA graph capture it must already be there, since a copy
    from elsewhere would be frozen into the graph at its captured value."""
    if value.device != device and capturing(device):
        raise ValueError(f"{name} is a tensor on {value.device} while a CUDA graph of the step is captured on "
                         f"{device}; put it on {device} (e.g. lr=torch.tensor(1e-3, device='{device}')) so that "
                         "each replay reads its current value")
    return value.to(device, non_blocking=True)


def check_slots(slots: Sequence[TensorSlots]):
    """What a kernel needs of its tensors; raised before any launch so nothing is half-updated."""
    for i, s in enumerate(slots):
        if s.param.dtype not in _TRITON_DTYPES:
            raise TypeError(f"tensor {i}: the Triton kernels support {list(_TRITON_DTYPES)}, not {s.param.dtype}; "
                            "use impl='reference' for other dtypes")
        for name, t in zip(("param", "grad", *("state",) * len(s.states)), s.tensors()):
            if not t.is_contiguous():
                raise ValueError(f"tensor {i}: the {name} is not contiguous; the fused kernel walks memory "
                                 "linearly. Make it contiguous or use impl='reference'")
            if t.device != s.param.device:
                raise ValueError(f"tensor {i}: the {name} is on {t.device}, its param on {s.param.device}")
        if s.grad.dtype != s.param.dtype or s.grad.shape != s.param.shape:
            raise ValueError(f"tensor {i}: the grad ({s.grad.dtype}, {tuple(s.grad.shape)}) does not match "
                             f"its param ({s.param.dtype}, {tuple(s.param.shape)})")
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


def _launch(kernel, slots: Sequence[TensorSlots], hyper: tuple, flags: tuple, rule_name: str,
            device_arguments=lambda device: {}, **arguments):
    check_slots(slots)
    launches: dict = {}
    for s in slots:
        if s.param.numel() > 0:
            launches.setdefault(s.launch_key(), []).append(s)
    for (device, param_dtype, state_dtype, aligned, tensor_flags, per_row), group in launches.items():
        n_states, n_scalars = len(group[0].states), len(group[0].scalars) - per_row
        if any(len(s.states) != n_states or len(s.scalars) != n_scalars + per_row for s in group):
            raise ValueError("every tensor of one launch needs the same number of states and scalars")
        numels = tuple(s.param.numel() for s in group)
        config = launch_config(rule_name, param_dtype, max(numels), device)
        chunk_size = config.block_size * config.blocks_per_program
        chunk_tensor, chunk_index = _chunk_map(numels, chunk_size, device)
        device_hyper = tuple(on_device(h, device, "a hyperparameter") if isinstance(h, torch.Tensor) else h
                             for h in hyper)
        kernel[(len(chunk_tensor),)](
            _pointer_table(group, device), chunk_tensor, chunk_index, device_hyper,
            **device_arguments(device), **arguments,
            FLAGS=flags + tensor_flags, N_STATES=n_states, N_SCALARS=n_scalars, PER_ROW=int(per_row),
            PARAM_DTYPE=_TRITON_DTYPES[param_dtype], STATE_DTYPE=_TRITON_DTYPES[state_dtype], ALIGNED=aligned,
            BLOCK_SIZE=config.block_size, BLOCKS_PER_PROGRAM=config.blocks_per_program,
            num_warps=config.num_warps, num_stages=config.num_stages,
            # Fused multiply-adds, as triton 3.6 to 3.9 do by default; named so that triton 3.10's new
            # default (off) does not silently change the rounding.
            enable_fp_fusion=True,
        )


def amp_arguments(amp: Optional[tuple]):
    """The kernels' AMP arguments on a device, from ``amp``: None, or GradScaler's (inverse scale,
    found_inf) as one-element fp32 tensors (found_inf ≠ 0: the step is skipped)."""
    if amp is not None:
        for name, value in zip(("the inverse scale", "found_inf"), amp):
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or value.numel() != 1:
                raise ValueError(f"amp: {name} must be a one-element fp32 tensor, got {value!r}")

    def arguments(device):
        if amp is None:
            return {"inv_scale_ptr": None, "found_inf_ptr": None, "AMP": False}
        inv_scale, found_inf = (on_device(t, device, f"GradScaler's {name}") for t, name in
                                zip(amp, ("scale", "found_inf")))
        return {"inv_scale_ptr": inv_scale, "found_inf_ptr": found_inf, "AMP": True}
    return arguments


def multi_tensor_update(update, slots: Sequence[TensorSlots], hyper: tuple, flags: tuple, rule_name: str,
                        seeds: Optional[dict] = None, amp: Optional[tuple] = None):
    """Apply the rule's ``update`` math to every tensor in ``slots``: one launch per launch key.

    ``seeds``: None rounds to nearest; {device: a 0-d int64 tensor there} makes bf16 and fp16 stores
    stochastic, keyed by the tensor's value, which each launch on that device then advances by one.
    ``amp``: None, or (inverse loss scale, found_inf) of torch.amp.GradScaler: gradients unscaled in the
    kernel, and on found_inf ≠ 0 nothing written.
    """
    amp_arguments_on = amp_arguments(amp)
    for device, seed in (seeds or {}).items():
        if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device != device:
            raise ValueError(f"the seed for {device} must be a one-element int64 tensor there, got {seed.dtype} "
                             f"with {seed.numel()} elements on {seed.device}")

    def device_arguments(device):
        if seeds is None:
            return {"seed_ptr": None, "STOCHASTIC": False, **amp_arguments_on(device)}
        seeds[device].add_(1)  # each launch draws other random bits (the low 32 bits count launches)
        return {"seed_ptr": seeds[device], "STOCHASTIC": True, **amp_arguments_on(device)}

    _launch(multi_tensor_update_kernel, slots, hyper, flags, rule_name, device_arguments, UPDATE=update)


def multi_tensor_reduce(reduce, slots: Sequence[TensorSlots], hyper: tuple, flags: tuple, rule_name: str,
                        out: torch.Tensor, amp: Optional[tuple] = None):
    """out += Σ over every element of every tensor of ``reduce(param, grad, states, scalars, hyper, FLAGS)``,
    a @triton.jit function returning fp32 terms shaped like its inputs. ``out``: a one-element fp32
    tensor on the tensors' device; the sum stays there (no host sync). ``amp`` as for
    multi_tensor_update: the sum of the unscaled gradients, or nothing on found_inf ≠ 0."""
    if out.dtype != torch.float32 or out.numel() != 1:
        raise ValueError(f"out must be a one-element fp32 tensor, got {out.dtype} with {out.numel()} elements")
    _launch(multi_tensor_reduce_kernel, slots, hyper, flags, rule_name, amp_arguments(amp), out_ptr=out,
            REDUCE=reduce)
