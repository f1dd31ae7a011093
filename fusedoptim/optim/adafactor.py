"""``Adafactor``: torch.optim.Adafactor's twin, with its arguments, defaults and state (a state_dict
loads both ways): ``row_var`` and ``col_var`` for a param of 2+ dims, O(n + m) for an n × m matrix,
``variance`` for the others. Its equations are the oracle's (``optim.reference.adafactor``);
``impl="triton"`` makes a step four phases of launches (docs/adafactor.md), prepared once per group and
kept while nothing but the gradients changes (``optim.adafactor_plan``):

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
import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.placement_types import Replicate

from fusedoptim.optim.adafactor_plan import VARIANCE_KIND, AdafactorPlan
from fusedoptim.optim.quantization import (QUANTIZED_DTYPES, dequantize, new_codes, quantize, quantize_constant,
                                           scale_name, scale_numel)
from fusedoptim.optim.reference.adafactor import adafactor, initial_state
from fusedoptim.optim.shards import local
from fusedoptim.optim.unregistered import StepAsOneOp


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
        both impls. ``row_var`` and ``col_var`` stay in the param's dtype: O(n + m), already small. An
        FSDP2 (DTensor) vector with a quantized variance is stepped whole on every rank (``optim.whole``).
    """

    DEFAULTS = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, maximize=False)
    # The kernels compute in fp32 and keep the state in the param's dtype, as torch (whose load_state_dict
    # casts every float state to its param's dtype: fp32 statistics of bf16 params would not survive it).
    FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
    QUANTIZED_STATE = "variance"
    QUANTIZED_SHARDS_STEP_WHOLE = True  # an FSDP2 vector with a quantized variance: gathered, stepped whole
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
        if isinstance(param, DTensor) and not (self.state_dtype is not None and param.dim() <= 1):
            return sharded_initial_state(param)
        if isinstance(param, DTensor):  # a quantized vector: whole plain states, the same on every rank
            param = torch.empty(param.shape, dtype=param.dtype, device=local(param).device)
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
        for index, (group, params, impl) in enumerate(stepped):
            if impl == "reference" or not params:
                self.__dict__.get("fused_plans", {}).pop(index, None)  # nothing kept for the kernels
            for p in params:
                if not self.state[p]:
                    self.state[p].update(self._initial_state(p))
            states = [self.state[p] for p in params]
            if impl == "reference" and self.state_dtype is not None:
                quantized_reference_adafactor(params, states, group)
            elif impl == "reference":
                adafactor(params, [p.grad for p in params], states, group)
            else:
                self._fused_step(index, group, params, states)

    def _fused_step(self, index, group, params, states) -> None:
        """The group's fused step, through its plan (``optim.adafactor_plan``), kept while it fits: the same
        group, params, state tensors and gradient layouts; else a new one, with every check."""
        plans = self.__dict__.setdefault("fused_plans", {})  # group index -> plan; a copy makes its own
        plan = plans.get(index)
        if plan is None or not plan.fits(group, params, states, self.state_dtype):
            plan = plans[index] = AdafactorPlan(group, params, states, self.state_dtype)
        plan.run()


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


__all__ = ["Adafactor", "quantized_reference_adafactor"]
