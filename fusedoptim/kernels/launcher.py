"""The one multi-tensor launcher that every elementwise update rule goes through: its host side.

What a rule's ``@triton.jit`` math receives and returns, and the kernels that run it, are in
``kernels.multi_tensor``; what it takes (``TensorSlots``) and their checks, in ``kernels.slots``. Here:
the table of pointers and sizes (one row per tensor) and the map from program to (tensor, chunk) that
torch's multi_tensor_apply also builds.

``Launch`` is one prepared launch: built once from tensors that share a launch key, checked, with its
table and program map on the device, then reused step after step. A step only hands it the current
gradients (after ``zero_grad(set_to_none=True)`` each is a new tensor): their pointers are written
into the table when they changed, from the host in eager mode, and by a small kernel whose arguments
are the gradients while a CUDA graph is captured (a capture may copy nothing from the host).
"""
from typing import Optional, Sequence

import torch
import triton

from fusedoptim.autotune import launch_config
from fusedoptim.kernels.multi_tensor import (GRAD_COLUMN, multi_tensor_reduce_kernel, multi_tensor_update_kernel,
                                  write_pointers_kernel)
from fusedoptim.kernels.rounding import INTERPRETED
from fusedoptim.kernels.slots import STATE_DTYPES, TRITON_DTYPES, QuantizedStates, TensorSlots, check_slots


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


def chunk_map(numels: tuple[int, ...], chunk_size: int, device: torch.device):
    """For each program, which tensor and which chunk of it, on ``device``. Made with its launch and
    kept by it, as its table is (a few ops more per plan build): a cache across launches would keep
    every size any optimizer ever stepped."""
    chunks = torch.tensor([triton.cdiv(n, chunk_size) for n in numels])
    chunk_tensor = torch.repeat_interleave(torch.arange(len(numels)), chunks)
    first_chunk = torch.cumsum(chunks, 0) - chunks
    chunk_index = torch.arange(len(chunk_tensor)) - first_chunk[chunk_tensor]
    return _upload(chunk_tensor.to(torch.int32), device), _upload(chunk_index.to(torch.int32), device)


# Launches a CUDA graph has recorded: the graph reads their tables again at every replay, so they are
# kept for the life of the process (a few KiB each), whatever becomes of the plan that made them.
_captured_launches: list = []


def kept_for_replay(launch: "Launch") -> bool:
    """Whether a CUDA graph has recorded ``launch``, which is then kept for the life of the process."""
    return any(launch is captured for captured in _captured_launches)


POINTERS_PER_WRITE = 32  # tensors per write_pointers_kernel launch: 256 bytes of kernel arguments


class Launch:
    """One launch, prepared: tensors that share a launch key, checked, their pointer table and the
    program → (tensor, chunk) map on the device, the launch configuration chosen. ``set_grads`` puts a
    step's gradients in; ``update`` and ``reduce`` launch."""

    def __init__(self, slots: Sequence[TensorSlots], rule_name: str, quantization: Optional[QuantizedStates] = None,
                 aligned: Optional[bool] = None):
        """``aligned``: None takes the first slot's alignment (its launch key's); False reads every tensor
        without assuming 16-byte alignment, for a launch whose pointers ``set_columns`` changes later."""
        first = slots[0]
        device, param_dtype, state_dtype, first_aligned, tensor_flags, per_row, master_bits, factored = first.launch_key()
        aligned = first_aligned if aligned is None else aligned and first_aligned
        self.aligned = aligned
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
        self.chunk_tensor, self.chunk_index = chunk_map(numels, config.block_size * config.blocks_per_program, device)
        self.grid = (len(self.chunk_tensor),)
        rows = [[s.param.numel(), max(s.row_length, 1), s.first] + [t.data_ptr() for t in (*s.tensors(), *s.scales, *s.scalars)]
                + ([] if s.residual is None else [s.residual.data_ptr()])
                + ([t.data_ptr() for t in s.factors] + [s.matrix_numel()] if s.factors else []) for s in slots]
        self.row_width = len(rows[0])
        host_table = torch.tensor(rows, dtype=torch.int64)
        self.table = _upload(host_table, device)
        self._host_view = host_table.numpy() if device.type == "cpu" else None  # the table itself, on a CPU
        self.grad_pointers = [s.grad.data_ptr() for s in slots]
        self.constants = dict(
            N_STATES=n_states, N_STATE_COLUMNS=n_states * (1 + (quantization is not None)), N_SCALARS=n_scalars,
            PER_ROW=int(per_row), PARAM_DTYPE=TRITON_DTYPES[param_dtype], STATE_DTYPE=STATE_DTYPES[state_dtype],
            QUANT=quantization, ALIGNED=aligned, BLOCK_SIZE=config.block_size,
            BLOCKS_PER_PROGRAM=config.blocks_per_program, MASTER_BITS=master_bits, FACTORED=int(factored),
            num_warps=config.num_warps,
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
                write_pointers_kernel[(1,)](self.table, self.row_width, GRAD_COLUMN.value, first, part,
                                            COUNT=len(part), enable_fp_fusion=True)  # as every launch here
        elif self._host_view is not None:
            self._host_view[:, GRAD_COLUMN.value] = pointers  # no torch op: nothing a step's trace would see
        else:
            column = torch.tensor(pointers, dtype=torch.int64).pin_memory()
            self.table[:, GRAD_COLUMN.value].copy_(column, non_blocking=True)
        self.grad_pointers = list(pointers)

    def set_columns(self, first_column: int, pointers) -> None:
        """Columns ``first_column``... of the table rewritten, outside a CUDA graph capture: ``pointers``
        (an int64 array, one row per tensor) holds the addresses of this launch's tensors of a new
        operation of the same shapes (L-BFGS's vector operations). On the CPU the table is written in
        place; on a GPU by one asynchronous copy, ordered after the launches that read it before."""
        if capturing(self.device):
            raise RuntimeError("a launch's table columns can be rewritten from the host only outside a CUDA graph "
                               "capture (a capture may copy nothing from the host)")
        width = pointers.shape[1]
        if self._host_view is not None:
            self._host_view[:, first_column: first_column + width] = pointers
        else:
            block = torch.from_numpy(pointers).pin_memory()
            self.table[:, first_column: first_column + width].copy_(block, non_blocking=True)

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
    flags, per-row scalars, factors): (the indices into ``slots`` it covers, the Launch). Checked first; empty
    tensors get no launch. ``quantization``: how quantized states are coded, None for float states."""
    check_slots(slots, quantization)
    indices: dict = {}
    for i, s in enumerate(slots):
        if s.param.numel() > 0:
            indices.setdefault(s.launch_key(), []).append(i)
    return [(members, Launch([slots[i] for i in members], rule_name, quantization)) for members in indices.values()]


__all__ = ["INTERPRETED", "Launch", "capturing", "chunk_map", "kept_for_replay", "on_device", "prepare_launches"]
