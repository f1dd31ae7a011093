r"""int8 optimizer state in plain PyTorch: the reference path's twin of ``kernels.quantization``.

A quantized state is two tensors: ``state[name]``, int8 codes laid out as the param (so the launcher
walks them like any state), and ``state[name + "_scale"]``, one fp32 scale per block of QUANT_BLOCK
elements of the param in memory order. The scheme follows the kind its ``State`` declares
(``optim.registry``), never the rule:

- ``signed`` (momenta, previous gradients): symmetric linear absmax, scale s = max|x| over the block,
  code c = ⌊127·x/s + ½⌋ in [−127, 127], x̂ = c·(s/127). Linear, not Dettmers et al. 2022's dynamic
  tree map, as torchao's and Li et al. 2023's first moments: a momentum's values in a block are of
  one magnitude, and round to nearest is exact to twin in the oracle.
- ``nonnegative`` (running means of squares: exp_avg_sq, max_exp_avg_sq, square_avg, acc_delta):
  companded, s = max v over the block, c = ⌊255·√(v/s) + ½⌋ in [0, 255] (unsigned, in the int8's
  bits), v̂ = (c/255)²·s. The square root spends the codes on small values: a v at 10⁻⁴ of its
  block's largest still gets code 3 rather than 0, where a linear map would make it 0 and blow up
  m/√v: the zero-point problem of Li et al. 2023 ("Memory Efficient Optimizers with 4-bit States"),
  who quantize the second moment without zero for the same reason.
- ``accumulator`` (Adagrad's sum) and ``multiplicative`` (EGStepSize's positive step sizes): the
  nonnegative map with stochastic rounding, c = ⌊255·√(v/s) + u⌋, u uniform in [0, 1): a sum grows by
  1/t of itself at step t and a step size by a factor e^{γ g g'} near 1, soon far below half a code
  step, which round to nearest would drop every time; rounded stochastically the code moves by the
  increment on average.

Blocks of 256 (torchao's 8-bit Adam; bitsandbytes uses 2048 and Li et al. 128): one fp32 scale per
256 bytes of codes, 1/64 of a byte per element, and an outlier spoils only its block. The kernel's
block is a multiple of it, so no quantization block straddles two programs.

The uniforms come from a counter-based hash (lowbias32, Wellons 2018) of the element's offset, the
state's column and a key: the group's ``quantization_count`` (the seed above bit 32, the steps below),
counted by each step and saved with the param groups, so a resumed run draws the same bits. Integer
arithmetic only, so the kernel and this twin draw the very same bits.
"""
import torch

QUANT_BLOCK = 256
QUANTIZED_DTYPES = ("int8",)  # values state_dtype takes besides torch's float dtypes
COUNT_KEY = "quantization_count"  # the param group's key: a 0-d int64, (seed << 32) + steps
SIGNED_LEVELS, UNSIGNED_LEVELS = 127, 255
UNSIGNED = {"signed": False, "nonnegative": True, "accumulator": True, "multiplicative": True}
STOCHASTIC = {"signed": False, "nonnegative": False, "accumulator": True, "multiplicative": True}
_MASK32 = 0xFFFFFFFF


def is_quantized(state_dtype) -> bool:
    return isinstance(state_dtype, str) and state_dtype in QUANTIZED_DTYPES


def storage_dtype(state_dtype, param: torch.Tensor) -> torch.dtype:
    """The dtype a state tensor of ``param`` is stored in: int8 codes, else the float state dtype."""
    return torch.int8 if is_quantized(state_dtype) else (state_dtype or param.dtype)


def scale_name(name: str) -> str:
    return name + "_scale"


def scale_numel(numel: int) -> int:
    return -(-numel // QUANT_BLOCK)


def memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a flat view, in memory order (channels_last, transposed...)."""
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d), reverse=True)
    return tensor.permute(order).reshape(-1)


def _blocks(flat: torch.Tensor) -> torch.Tensor:
    """[n] → [blocks, QUANT_BLOCK], the tail padded with zeros (which never raise a block's max)."""
    padding = scale_numel(flat.numel()) * QUANT_BLOCK - flat.numel()
    return torch.nn.functional.pad(flat, (0, padding)).view(-1, QUANT_BLOCK)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """x·constant mod 2³², in int64 without overflow: the constant in 16-bit halves."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (Wellons 2018) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(count: torch.Tensor, column: int, numel: int) -> torch.Tensor:
    """Uniform [0, 1) fp32 per element offset 0..numel−1 of state ``column``, keyed by ``count``."""
    low, high = count & _MASK32, (count >> 32) & _MASK32
    key = hash32(hash32((low * 8 + column) & _MASK32) ^ high)
    offsets = torch.arange(numel, dtype=torch.int64, device=count.device) & _MASK32
    bits = hash32(offsets ^ key)
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def quantize(values: torch.Tensor, kind: str, codes: torch.Tensor, scales: torch.Tensor,
             count=None, column: int = 0) -> None:
    """fp32 ``values`` into ``codes`` (int8, laid out as values) and ``scales`` (fp32, one per block);
    a stochastic kind draws its rounding from (count, column), round to nearest without a count."""
    values = values.float()
    if values.stride() != codes.stride():  # blocks follow the codes' memory order (a checkpoint's layout may differ)
        values = torch.empty_like(codes, dtype=torch.float32).copy_(values)
    flat = memory_order(values)
    blocks = _blocks(flat)
    scale = blocks.abs().amax(dim=1, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    if UNSIGNED[kind]:
        scaled, low, high = (blocks / safe).sqrt() * UNSIGNED_LEVELS, 0, UNSIGNED_LEVELS
    else:
        scaled, low, high = blocks / (safe / SIGNED_LEVELS), -SIGNED_LEVELS, SIGNED_LEVELS
    # code 0 where the scale is 0, and for an inf over its inf scale (NaN), as the kernel
    scaled = torch.where((scale > 0) & (scaled == scaled), scaled, torch.zeros_like(scaled))
    if STOCHASTIC[kind] and count is not None:
        offset = _blocks(uniforms(count, column, flat.numel()))
    else:
        offset = torch.full_like(scaled, 0.5)
    code = (scaled + offset).floor().clamp(low, high).view(-1)[:flat.numel()]
    # Unsigned codes 128..255 are kept in the int8's bits (as −128..−1), as the kernel stores them.
    memory_order(codes).copy_(code.to(torch.int32).to(torch.uint8).view(torch.int8))
    scales.copy_(scale.view(-1))


def dequantize(codes: torch.Tensor, scales: torch.Tensor, kind: str) -> torch.Tensor:
    """The fp32 values of ``codes``, laid out as the codes."""
    flat = memory_order(codes)
    scale = scales.float().repeat_interleave(QUANT_BLOCK)[:flat.numel()]
    if UNSIGNED[kind]:
        ratio = flat.view(torch.uint8).float() / UNSIGNED_LEVELS
        values = ratio * ratio * scale
    else:
        values = flat.float() * (scale / SIGNED_LEVELS)
    result = torch.empty_like(codes, dtype=torch.float32)
    memory_order(result).copy_(values)
    return result


def new_count(seed: int, device) -> torch.Tensor:
    return torch.tensor(seed << 32, dtype=torch.int64, device=device)
