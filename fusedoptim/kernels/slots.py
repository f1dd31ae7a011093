"""What the multi-tensor launcher takes, and its checks: ``TensorSlots``, one param as the kernel sees
it (param, gradient, states, scalars, a master residual, quantized states' scales), and
``check_slots``, what a kernel needs of them, raised before any launch so nothing is half-updated.
The layout the kernels walk (``walkable``, ``layout_problem``) is stated here once; the plan asks it
too, before any change, to choose the impl (``optim.impl``)."""
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
import triton.language as tl

from fusedoptim.kernels.master_weights import MASTER_BITS
from fusedoptim.kernels.multi_tensor import ALIGNMENT_BYTES
from fusedoptim.kernels.quantization import code_bytes, scale_count

TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
STATE_DTYPES = {**TRITON_DTYPES, torch.int8: tl.int8, torch.uint8: tl.uint8}  # codes, with QuantizedStates


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
    # The index of the param's first element in the whole tensor it is a part of (an FSDP2 shard's
    # offset in its DTensor, in memory order): the codes' random draws are keyed by it.
    first: int = 0
    # () or (rows, columns): the param is a stack of matrices in rows of row_length (a tensor's last
    # two dimensions), rows holds one fp32 value per row of the stack and columns one per column of
    # each matrix (its shape [..., 1, row_length]); the kernels gather both at each element and hand
    # them to the rule after its scalars (Adafactor's row and column statistics). The scalars then
    # are per tensor only.
    factors: tuple[torch.Tensor, ...] = ()

    def matrix_numel(self) -> int:
        """The elements of each of a factored param's matrices."""
        return self.param.numel() * self.row_length // self.factors[1].numel()

    def tensors(self):
        return (self.param, self.grad, *self.states)

    def launch_key(self):
        """Tensors that share this key share one launch."""
        tensors = self.tensors() if self.residual is None else (*self.tensors(), self.residual)
        aligned = all(t.data_ptr() % ALIGNMENT_BYTES == 0 for t in tensors)
        state_dtype = self.states[0].dtype if self.states else self.param.dtype
        return (self.param.device, self.param.dtype, state_dtype, aligned, self.flags,
                self.row_length > 0 and not self.factors, 0 if self.residual is None else MASTER_BITS[self.residual.dtype],
                bool(self.factors))


def walkable(tensor: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether the kernel can walk ``tensor`` element by element beside ``like``: the same shape and
    strides, dense and non-overlapping (contiguous, channels_last, a transposed matrix...), so that the
    i-th element in memory of each is the same element of the param."""
    return tensor.shape == like.shape and tensor.stride() == like.stride() and _dense(tensor)


def layout_problem(what: str, tensor: torch.Tensor, param: torch.Tensor) -> str:
    """Why the kernel cannot walk ``what`` (the param, its gradient, a state) beside its param, or "".
    The one statement of the layout the kernels need: the plan asks it before any change (to choose
    the impl), ``check_slots`` before any launch."""
    if walkable(tensor, param):
        return ""
    return (f"the {what} (shape {tuple(tensor.shape)}, strides {tensor.stride()}) is not laid out as its param "
            f"(shape {tuple(param.shape)}, strides {param.stride()}) in one dense block; the fused kernel walks "
            "memory linearly. Make them dense with the same strides (e.g. .contiguous())")


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
        if s.param.dtype not in TRITON_DTYPES:
            raise TypeError(f"tensor {i}: the Triton kernels support {list(TRITON_DTYPES)}, not {s.param.dtype}; "
                            "use impl='reference' for other dtypes")
        walked = s.tensors() if quantization is None or quantization.BITS == 8 else (s.param, s.grad)
        for name, t in zip(("param", "grad", *("state",) * len(s.states)), walked):
            problem = layout_problem(name, t, s.param)
            if problem:
                raise ValueError(f"tensor {i}: {problem}, or use impl='reference'")
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
        _check_factors(i, s)
        rows = s.param.numel() // s.row_length if s.row_length and not s.factors else 1
        for j, t in enumerate(s.scalars):
            expected = rows if j == len(s.scalars) - 1 else 1
            if t.dtype != torch.float32 or t.numel() != expected or t.device != s.param.device:
                raise ValueError(f"tensor {i}: scalar {j} must be an fp32 tensor of {expected} element(s) on "
                                 f"{s.param.device}, got {t.dtype} with {t.numel()} elements on {t.device}")
        if s.row_length and not s.factors and (s.param.numel() % s.row_length or not s.scalars):
            raise ValueError(f"tensor {i}: row_length={s.row_length} must divide its {s.param.numel()} elements, "
                             "and the last scalar holds the per-row values")


def _check_factors(i: int, s: TensorSlots):
    """A factored param: a dense stack of matrices in rows of row_length, one fp32 value per row of the
    stack and one per column of each matrix, contiguous on the param's device."""
    if not s.factors:
        return
    if len(s.factors) != 2 or not s.row_length or s.param.numel() % s.row_length:
        raise ValueError(f"tensor {i}: factors are (rows, columns) of a param in rows of row_length elements "
                         f"(row_length={s.row_length}, {s.param.numel()} elements, {len(s.factors)} factors)")
    rows, columns = s.factors
    matrices = columns.numel() // s.row_length
    for name, t, expected in (("rows", rows, s.param.numel() // s.row_length), ("columns", columns, None)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device != s.param.device \
                or (expected is not None and t.numel() != expected):
            raise ValueError(f"tensor {i}: the factor {name} must be a contiguous fp32 tensor on {s.param.device} "
                             f"({expected or 'a multiple of row_length'} elements), got {t.dtype} with {t.numel()} "
                             f"elements on {t.device}")
    if columns.numel() % s.row_length or not matrices or s.param.numel() % matrices \
            or not s.param.is_contiguous():
        raise ValueError(f"tensor {i}: {columns.numel()} column values do not make whole matrices of rows of "
                         f"{s.row_length} in a contiguous param of {s.param.numel()} elements")


def _check_quantized(i: int, s: TensorSlots, quantization: Optional[QuantizedStates]):
    """Quantized states come with one dense fp32 scale tensor each, one value per quantization block."""
    if quantization is None:
        if s.scales or any(t.dtype in (torch.int8, torch.uint8) for t in s.states):
            raise ValueError(f"tensor {i}: quantized states and scales need the launch's QuantizedStates")
        return
    if len(s.scales) != len(s.states) or len(quantization.UNSIGNED) != len(s.states):
        raise ValueError(f"tensor {i}: {len(s.states)} quantized states need as many scale tensors and schemes, got "
                         f"{len(s.scales)} and {len(quantization.UNSIGNED)}")
    blocks = scale_count(s.param.numel(), quantization.BLOCK)
    for j, (state, scale) in enumerate(zip(s.states, s.scales)):
        if quantization.BITS == 8 and state.dtype != torch.int8:
            raise ValueError(f"tensor {i}: state {j} is {state.dtype}; 8-bit states are int8 codes")
        packed = code_bytes(s.param.numel(), 4)
        if quantization.BITS == 4 and (state.dtype != torch.uint8 or state.numel() != packed
                                       or not state.is_contiguous() or state.device != s.param.device):
            raise ValueError(f"tensor {i}: state {j} must be {packed} contiguous uint8 on {s.param.device} (two "
                             f"4-bit codes a byte), got {state.dtype} with {state.numel()} elements on {state.device}")
        if scale.dtype != torch.float32 or scale.numel() != blocks or not scale.is_contiguous() \
                or scale.device != s.param.device:
            raise ValueError(f"tensor {i}: the scales of state {j} must be a contiguous fp32 tensor of {blocks} "
                             f"elements (one per {quantization.BLOCK}) on {s.param.device}, got {scale.dtype} with "
                             f"{scale.numel()} elements on {scale.device}")


__all__ = ["QuantizedStates", "STATE_DTYPES", "TRITON_DTYPES", "TensorSlots", "check_slots", "layout_problem",
           "walkable"]
