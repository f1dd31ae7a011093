"""``Adafactor``: torch.optim.Adafactor's twin, with its arguments, defaults and state (a state_dict
loads both ways): ``row_var`` and ``col_var`` for a param of 2+ dims, O(n + m) for an n × m matrix,
``variance`` for the others. Its equations are the oracle's (``optim.reference.adafactor``);
``impl="triton"`` makes a step four phases of launches (docs/adafactor.md):

1. **reduce** (the launcher's reduce): Σθ² per tensor; Σg² per row of each factored tensor; for a
   vector, Σu² too. The column sums Σ_i g²: ``kernels.adafactor.column_square_sums``, one launch per
   factored tensor.
2. **statistics**: R and C lerped toward the means, R / max(mean R, ε₁): torch ops on O(n + m) values.
3. **second reduce**: Σu² per factored tensor, reading R_i / max(mean R, ε₁) and C_j gathered per element.
4. **update**: θ ← θ·(1 − lr·λ) − (α/denom)·u, and the vectors' variance.

α and denom are computed on the host in Python floats, from Σθ² and Σu²: one host sync per group and
step (torch makes two per param).

Adafactor is a rule of the factored shape (its row: ``optim.registry.SHAPED_RULES``).
Its interface is the class: ``Adafactor.DEFAULTS``, ``Adafactor.IMPLS``, ``Adafactor.STATE``,
``chosen_impl()``. Its step compiles as one opaque op (``optim.unregistered.StepAsOneOp``).
"""
import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.placement_types import Replicate

from fusedoptim.kernels import adafactor as kernels
from fusedoptim.kernels.launcher import prepare_launches
from fusedoptim.kernels.slots import QuantizedStates, TensorSlots
from fusedoptim.optim.quantization import (FORMATS, QUANTIZED_DTYPES, STOCHASTIC, UNSIGNED, dequantize, new_codes,
                                           quantize, quantize_constant, scale_name, scale_numel)
from fusedoptim.optim.reference.adafactor import adafactor, initial_state, resolved_eps1, scalar_lr
from fusedoptim.optim.shards import Shards, local
from fusedoptim.optim.unregistered import StepAsOneOp

# A vector's variance is a running mean of squares: the "nonnegative" scheme (optim.quantization), as the
# registry's exp_avg_sq and square_avg declare it. Round to nearest: no random draws.
VARIANCE_KIND = "nonnegative"


def adafactor_state_bytes(group, shapes, param_dtype) -> int:
    """Bytes of state kept for params of these shapes after a step: a 4-byte step each; for a param of
    2+ dims [..., n, m] its row and column statistics, numel/m + numel/n values (O(n + m) for a matrix);
    else its variance, numel values; in the param's dtype, as torch keeps them."""
    element = torch.empty((), dtype=param_dtype).element_size()
    total = 0
    for shape in map(torch.Size, shapes):
        factored = len(shape) >= 2 and shape.numel()
        values = shape.numel() // shape[-1] + shape.numel() // shape[-2] if factored else shape.numel()
        total += 4 + values * element
    return total


class Adafactor(StepAsOneOp):
    """Adafactor (Shazeer & Stern 2018), torch.optim.Adafactor's twin: the same arguments, defaults,
    state and arithmetic; the equations in ``fusedoptim.optim.reference.adafactor``.

    lr=1e-2: the cap of the relative step size ρ_t = min(lr, 1/√t), and the decay's scale; a float or
        a 1-element tensor (read on the host each step, as torch).
    beta2_decay=-0.8: τ ≤ 0, the second moment's weight t^τ at step t.
    eps=(None, 1e-3): ε₁ floors mean(R) and √V̂ (None: the params' dtype's machine epsilon); ε₂ floors
        RMS(θ) in the step size α_t = max(ε₂, RMS(θ))·ρ_t.
    d=1.0: the update is clipped to RMS ≤ d.
    weight_decay=0.0: θ ← θ(1 − lr·λ) before the update.
    foreach=None: torch's switch; accepted, not stored (the impl decides).
    maximize=False: ascend instead.
    impl="auto" (keyword-only): "reference" the oracle; "triton" the launches (fp32, bf16 or fp16
        contiguous params on one CUDA device, or the CPU with TRITON_INTERPRET=1; the state in the
        param's dtype, as torch's; FSDP2 shards too); "auto" the kernels where they run.
    state_dtype=None (keyword-only): None keeps every statistic in the param's dtype, as torch; "int8" or
        "int4" keeps a vector's ``variance`` as codes (``state["variance"]``) and fp32 scales
        (``state["variance_scale"]``), the registry's "nonnegative" scheme (``optim.quantization``), in
        both impls. ``row_var`` and ``col_var`` stay in the param's dtype: O(n + m), already small. Not
        for FSDP2 (DTensor) params.
    """

    DEFAULTS = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, maximize=False)
    # The kernels compute in fp32 and keep the state in the param's dtype, as torch (whose load_state_dict
    # casts every float state to its param's dtype: fp32 statistics of bf16 params would not survive it).
    FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
    QUANTIZED_STATE = "variance"
    STATE = ("step", "row_var", "col_var", "variance")

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 foreach=None, maximize=False, impl="auto", state_dtype=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:  # torch's checks, in its order and words
            raise ValueError("Tensor lr must be 1-element")
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Adafactor: eps={eps!r} must be a pair (epsilon1 or None, epsilon2)")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        if foreach not in (None, True, False):
            raise ValueError(f"Adafactor: foreach={foreach!r} must be None, True or False")
        if state_dtype is not None and state_dtype not in QUANTIZED_DTYPES:
            raise ValueError(f"Adafactor: state_dtype={state_dtype!r} is not supported; use None (the param's dtype, "
                             f"as torch) or one of {QUANTIZED_DTYPES} (a quantized variance)")
        self.impl = impl
        self.state_dtype = state_dtype
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d, weight_decay=weight_decay,
                        maximize=maximize)
        super().__init__(params, defaults)

    def __getstate__(self):
        return {**super().__getstate__(), "state_dtype": self.state_dtype}

    def __setstate__(self, state):
        super().__setstate__(state)
        # torch's load_state_dict calls this with state and groups alone: the option stays; a copy pickled
        # before the option existed gets its default.
        self.__dict__.setdefault("state_dtype", None)

    def _initial_state(self, param) -> dict:
        """torch's state; a quantized vector's variance as codes and scales of zero."""
        if isinstance(param, DTensor):
            return sharded_initial_state(param)
        state = initial_state(param)
        if self.state_dtype is not None and "variance" in state:
            codes = new_codes(param, self.state_dtype)
            scales = torch.empty(scale_numel(param.numel(), self.state_dtype), dtype=torch.float32,
                                 device=param.device)
            quantize_constant(0.0, VARIANCE_KIND, codes, scales, param.numel())
            state["variance"], state[scale_name("variance")] = codes, scales
        return state

    def _eager_step(self):
        """One Adafactor step of every param with a gradient (``step`` runs it, or its op under torch.compile)."""
        stepped = self.groups_to_step()
        for _, params, impl in stepped:
            if impl == "reference" and any(isinstance(p, DTensor) for p in params):
                raise RuntimeError("Adafactor's reference impl steps whole tensors, and these params are FSDP2 "
                                   "shards (DTensors): use impl='triton', which sums the statistics over the shards")
            if self.state_dtype is not None:
                self.check_quantized_states(params)
        for group, params, impl in stepped:
            for p in params:
                if not self.state[p]:
                    self.state[p].update(self._initial_state(p))
            states = [self.state[p] for p in params]
            if impl == "reference" and self.state_dtype is not None:
                quantized_reference_adafactor(params, states, group)
            elif impl == "reference":
                adafactor(params, [p.grad for p in params], states, group)
            else:
                fused_adafactor(params, states, group, self.state_dtype)


def quantized_reference_adafactor(params, states, group) -> None:
    """The oracle with a vector's variance quantized: run on its fp32 values (and the vector's gradient
    in fp32, as the kernel computes the variance and U), quantized back after with the kernel's scheme,
    as the registry's reference does (``optim.runtime.Runtime.reference_step``). Factored params step
    as the oracle steps them, their statistics in the param's dtype."""
    variance_scale = scale_name("variance")
    full_states, grads = [], []
    for p, state in zip(params, states):
        if "variance" in state:
            full_states.append({"step": state["step"],
                                "variance": dequantize(state["variance"], state[variance_scale], VARIANCE_KIND, p)})
            grads.append(p.grad.float())
        else:
            full_states.append(state)
            grads.append(p.grad)
    adafactor(params, grads, full_states, group)  # the step counters are the states' own: counted once
    for state, full_state in zip(states, full_states):
        if "variance" in state:
            quantize(full_state["variance"], VARIANCE_KIND, state["variance"], state[variance_scale])


def sharded_initial_state(param: DTensor) -> dict:
    """``initial_state`` of an FSDP2 param (a DTensor split along dim 0, ``optim.shards``): each state a
    DTensor over this rank's part, as torch.distributed.checkpoint saves and reshards it. The row
    statistics of a matrix, and both statistics of a stack (dim 0 counts its matrices), are split as
    the param's dim 0; a matrix's column statistics, summed over the shards, are the same on every
    rank: replicated, so DCP saves them once and loads them on any mesh."""
    shard = local(param)
    if param.dim() <= 1:
        return {"step": torch.tensor(0.0, dtype=torch.float32),
                "variance": _placed(torch.zeros_like(shard), param, param.placements, param.shape)}
    state = initial_state(shard)
    columns = [Replicate()] if param.dim() == 2 else param.placements
    return {"step": state["step"],
            "row_var": _placed(state["row_var"], param, param.placements, (*param.shape[:-1], 1)),
            "col_var": _placed(state["col_var"], param, columns, (*param.shape[:-2], 1, param.shape[-1]))}


def _placed(shard, param, placements, shape) -> DTensor:
    shape = torch.Size(shape)
    strides = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(shard, param.device_mesh, placements, run_check=False, shape=shape, stride=strides)


def _sum_over_shards(tensors: list, group) -> None:
    """In place, each tensor (this rank's partial sums) becomes its sum over the ranks of ``group``:
    one all-reduce of them all."""
    if not tensors:
        return
    total = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(total, group=group)
    torch._foreach_copy_(tensors, [part.view_as(t) for part, t in zip(total.split([t.numel() for t in tensors]),
                                                                      tensors)])


def fused_adafactor(params, states, group, state_dtype=None) -> None:
    """The oracle's step as the four phases of launches (the module's docstring). FSDP2 params (DTensors
    split along dim 0) step their local shards: the row sums of a matrix lie whole in a shard, and a
    stack's matrices too; Σθ², Σu², a matrix's column sums and its Σ R_i are partial sums, summed over the
    shards (one all-reduce after the row statistics, one after the second reduce), so that every rank
    computes what one process would, and every rank's column statistics are the same. ``state_dtype``
    "int8"/"int4": the vectors' variance are codes and scales (plain tensors only), read and written
    through the launcher's quantized path."""
    shards = Shards.of(params, "Adafactor's param group")
    sharded = [shards is not None and shards.groups[i] is not None for i in range(len(params))]
    shard_group = next((g for g in shards.groups if g is not None), None) if shards else None
    shapes = [p.shape for p in params]  # global shapes: a DTensor's
    numels = [p.numel() for p in params]
    states = [{name: local(value) for name, value in state.items()} for state in states]
    grads = [local(p.grad) for p in params]
    params = [local(p) for p in params]
    device = params[0].device
    lr = scalar_lr(group["lr"])  # a tensor lr: read on the host below (a sync where it lives on a GPU)
    eps1, eps2 = resolved_eps1(group, params), group["eps"][1]
    hyper = kernels.AdafactorHyper(eps1_squared=eps1 * eps1, decay=float(1 - lr * group["weight_decay"]))
    flags = kernels.AdafactorFlags(MAXIMIZE=bool(group["maximize"]))
    steps = []
    for state in states:
        state["step"] += 1
        steps.append(state["step"].item())  # a CPU tensor, as torch's: no device sync
    weights = torch.tensor([t ** group["beta2_decay"] for t in steps], dtype=torch.float32).to(device)  # 1 − β̂₂ₜ
    theta_squares = torch.zeros(len(params), dtype=torch.float32, device=device)
    update_squares = torch.zeros(len(params), dtype=torch.float32, device=device)
    factored = [i for i, p in enumerate(params) if p.dim() > 1]
    vectors = [i for i, p in enumerate(params) if p.dim() <= 1]

    # 1. reduce: Σθ², Σg² per row (factored), Σu² (vectors); the factored tensors' column sums.
    row_sums = {i: torch.zeros(states[i]["row_var"].numel(), dtype=torch.float32, device=device) for i in factored}
    column_sums = {i: torch.zeros(states[i]["col_var"].shape, dtype=torch.float32, device=device) for i in factored}
    _reduce(kernels.square_sums, 2, hyper, flags,
            [TensorSlots(param=params[i], grad=grads[i], scalars=(theta_squares[i], row_sums[i]),
                         row_length=params[i].shape[-1]) for i in factored])
    for i in factored:
        if params[i].numel():
            kernels.column_square_sums(grads[i], column_sums[i])
    quantization, variance_scales = None, {i: () for i in vectors}
    if state_dtype is not None:
        fmt = FORMATS[state_dtype]
        quantization = QuantizedStates(fmt.bits, fmt.block, (UNSIGNED[VARIANCE_KIND],), (STOCHASTIC[VARIANCE_KIND],))
        variance_scales = {i: (states[i][scale_name("variance")],) for i in vectors}
    _reduce(kernels.vector_sums, 2, hyper, flags,
            [TensorSlots(param=params[i], grad=grads[i], states=(states[i]["variance"],), scales=variance_scales[i],
                         scalars=(weights[i], theta_squares[i], update_squares[i])) for i in vectors], quantization)

    # 2. statistics, O(n + m) per tensor: R lerped toward the row means; the shards' partial sums
    # added up (a matrix's rows span the shards: its column sums and Σ R_i); C lerped toward the column
    # means, R / max(mean R, ε₁).
    row_totals = {}
    for i in factored:
        state, m = states[i], shapes[i][-1]
        row_mean = row_sums[i].view_as(state["row_var"]).div_(m).to(state["row_var"].dtype)
        state["row_var"].lerp_(row_mean, steps[i] ** group["beta2_decay"])
        row_totals[i] = state["row_var"].sum(dim=-2, keepdim=True, dtype=torch.float32)
    split_matrices = [i for i in factored if sharded[i] and len(shapes[i]) == 2]
    _sum_over_shards([theta_squares[i] for i in range(len(params)) if sharded[i]]
                     + [update_squares[i] for i in vectors if sharded[i]]
                     + [column_sums[i] for i in split_matrices] + [row_totals[i] for i in split_matrices], shard_group)
    row_factors = {}
    for i in factored:
        state, n = states[i], shapes[i][-2]
        state["col_var"].lerp_(column_sums[i].div_(n).to(state["col_var"].dtype), steps[i] ** group["beta2_decay"])
        row_factors[i] = (state["row_var"].float() / row_totals[i].div_(n).clamp(min=eps1)).reshape(-1)

    # 3. second reduce: Σu² of the factored tensors, reading R_i/max(mean R, ε₁) and C_j per element.
    factored_slots = [TensorSlots(param=params[i], grad=grads[i], scalars=(update_squares[i],),
                                  row_length=params[i].shape[-1],
                                  factors=(row_factors[i], states[i]["col_var"].float().reshape(-1)))
                      for i in factored]
    _reduce(kernels.factored_update_squares, 1, hyper, flags, factored_slots)
    _sum_over_shards([update_squares[i] for i in factored if sharded[i]], shard_group)

    # The step sizes −α/denom as torch computes them (Python floats, or fp32 0-d tensors for a tensor
    # lr): the step's one host sync, reading Σθ² and Σu².
    step_sizes = []
    for numel, t, theta_square, update_square in zip(numels, steps, theta_squares.tolist(), update_squares.tolist()):
        alpha = max(eps2, math.sqrt(theta_square) / (numel ** 0.5)) * min(lr, 1 / (t ** 0.5))
        denom = max(1.0, math.sqrt(update_square) / ((numel ** 0.5) * group["d"]))
        step_sizes.append(float(-alpha / denom))
    step_sizes = torch.tensor(step_sizes, dtype=torch.float32).to(device)

    # 4. update: θ and the vectors' variance.
    _update(kernels.factored_update, hyper, flags,
            [TensorSlots(param=s.param, grad=s.grad, scalars=(step_sizes[i],), row_length=s.row_length,
                         factors=s.factors) for i, s in zip(factored, factored_slots)])
    _update(kernels.vector_update, hyper, flags,
            [TensorSlots(param=params[i], grad=grads[i], states=(states[i]["variance"],), scales=variance_scales[i],
                         scalars=(weights[i], step_sizes[i])) for i in vectors], quantization)


def _reduce(function, outputs, hyper, flags, slots, quantization=None) -> None:
    for _, launch in prepare_launches(slots, "adafactor", quantization):
        launch.reduce(function, None, outputs, hyper, flags)


def _update(function, hyper, flags, slots, quantization=None) -> None:
    # The codes' random key: the nonnegative scheme rounds to nearest and draws nothing, so any count serves.
    count = None if quantization is None else torch.zeros((), dtype=torch.int64)
    for _, launch in prepare_launches(slots, "adafactor", quantization):
        launch.update(function, None, hyper, flags, quantization_count=count)


__all__ = ["Adafactor", "fused_adafactor", "quantized_reference_adafactor"]
