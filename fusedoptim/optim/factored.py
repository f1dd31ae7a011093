"""The engine of the factored shape (``optim.factored_rule.FactoredRule``): the class of each factored rule,
made from its declaration (``factored_optimizer``). ``impl="triton"`` makes a step four phases of
launches (docs/adafactor.md), prepared once per group and kept while nothing but the gradients changes
(``optim.factored_plan``); the rule's math runs in them:

1. **reduce** (the launcher's reduce): Σθ² per tensor; the term (g²) summed per row of each factored
   tensor; for a vector, Σu² too. The column sums: the rule's ``column_sums``, one launch per factored tensor.
2. **statistics**: R and C lerped toward the means, R / max(mean R, floor): torch ops on O(n + m) values.
3. **second reduce**: Σu² per factored tensor, reading R_i / max(mean R, floor) and C_j gathered per element.
4. **update**: θ (and the vectors' statistic) from the rule's step size, read on the host from Σθ² and Σu²:
   one host sync per group and step.

The engine does the rest for every factored rule: param groups and state, the impl, FSDP2's shards (the
statistics summed over them), an int8/int4 vector statistic, and checkpoints. Its step compiles as one
opaque op (``optim.unregistered.StepAsOneOp``).
"""
import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.placement_types import Replicate

from fusedoptim.optim.factored_plan import FactoredPlan
from fusedoptim.optim.quantization import (QUANTIZED_DTYPES, dequantize, new_codes, quantize, quantize_constant,
                                           scale_name, scale_numel)
from fusedoptim.optim.shards import local
from fusedoptim.optim.unregistered import StepAsOneOp, shaped_class

OPTIONS = dict(impl="auto", state_dtype=None)  # the shape's keyword-only options, after the rule's arguments


def factored_optimizer(rule) -> type:
    """The class of one factored rule: its signature (``params``, the rule's arguments, then its keyword-only
    ones and ``OPTIONS`` after a ``*``), its docstring, its checks at construction, on ``FactoredOptimizer``."""
    return shaped_class(rule, FactoredOptimizer, OPTIONS, rule.keyword_only,
                        DEFAULTS=rule.checked({**rule.defaults, **rule.keyword_only}),
                        QUANTIZED_STATE=rule.vector_state, STATE=rule.states)


class FactoredOptimizer(StepAsOneOp):
    """The base of every factored rule's class (``factored_optimizer``): ``rule`` is its declaration."""

    rule = None
    # The kernels compute in fp32 and keep the state in the param's dtype, as torch (whose load_state_dict
    # casts every float state to its param's dtype: fp32 statistics of bf16 params would not survive it).
    FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
    QUANTIZED_SHARDS_STEP_WHOLE = True  # an FSDP2 vector with a quantized statistic: gathered, stepped whole

    def __init__(self, params, arguments, impl="auto", state_dtype=None):
        defaults = self.rule.checked(arguments)  # the rule's checks first (torch's order), then the options
        if state_dtype is not None and state_dtype not in QUANTIZED_DTYPES:
            raise ValueError(f"{self.rule.name}: state_dtype={state_dtype!r} is not supported; use None (the param's "
                             f"dtype, as torch) or one of {QUANTIZED_DTYPES} (a quantized {self.rule.vector_state})")
        self.impl = impl
        self.state_dtype = state_dtype
        super().__init__(params, defaults)

    def __getstate__(self):
        return {**super().__getstate__(), "state_dtype": self.state_dtype}

    def __setstate__(self, state):
        super().__setstate__(state)
        # torch's load_state_dict calls this with state and groups alone: the option stays; a copy pickled
        # before the option existed gets its default.
        self.__dict__.setdefault("state_dtype", None)

    def _initial_state(self, param) -> dict:
        """torch's state; a quantized vector's statistic as codes and scales of zero."""
        if isinstance(param, DTensor) and not (self.state_dtype is not None and param.dim() <= 1):
            return sharded_initial_state(self.rule, param)
        if isinstance(param, DTensor):  # a quantized vector: whole plain states, the same on every rank
            param = torch.empty(param.shape, dtype=param.dtype, device=local(param).device)
        state = initial_state(self.rule, param)
        vector = self.rule.vector_state
        if self.state_dtype is not None and vector in state:
            codes = new_codes(param, self.state_dtype)
            scales = torch.empty(scale_numel(param.numel(), self.state_dtype), dtype=torch.float32,
                                 device=param.device)
            quantize_constant(0.0, self.rule.vector_kind, codes, scales, param.numel())
            state[vector], state[scale_name(vector)] = codes, scales
        return state

    def _eager_step(self):
        """One step of every param with a gradient (``step`` runs it, or its op under torch.compile)."""
        stepped = self.groups_to_step()
        for _, params, impl in stepped:
            if impl == "reference" and any(isinstance(p, DTensor) for p in params):
                raise RuntimeError(f"{self.rule.name}'s reference impl steps whole tensors, and these params are FSDP2 "
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
                quantized_reference_step(self.rule, params, states, group)
            elif impl == "reference":
                self.rule.reference(params, [p.grad for p in params], states, group)
            else:
                self._fused_step(index, group, params, states)

    def _fused_step(self, index, group, params, states) -> None:
        """The group's fused step, through its plan (``optim.factored_plan``), kept while it fits: the same
        group, params, state tensors and gradient layouts; else a new one, with every check."""
        plans = self.__dict__.setdefault("fused_plans", {})  # group index -> plan; a copy makes its own
        plan = plans.get(index)
        if plan is None or not plan.fits(group, params, states, self.state_dtype):
            plan = plans[index] = FactoredPlan(self.rule, group, params, states, self.state_dtype)
        plan.run()


def initial_state(rule, param: torch.Tensor) -> dict:
    """torch's state at the first step: step 0 (a CPU fp32 0-d tensor), the row and column statistics of a
    2+-dim param, the element-wise statistic of the others, in the param's dtype."""
    state = {"step": torch.tensor(0.0, dtype=torch.float32)}
    if param.dim() > 1:
        state[rule.row_state] = param.new_zeros((*param.shape[:-1], 1))
        state[rule.column_state] = param.new_zeros((*param.shape[:-2], 1, param.shape[-1]))
    else:
        state[rule.vector_state] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


def quantized_reference_step(rule, params, states, group) -> None:
    """The oracle with a vector's statistic quantized: run on its fp32 values (and the vector's gradient
    in fp32, as the kernel computes the statistic and U), quantized back after with the kernel's scheme,
    as the registry's reference does (``optim.runtime.Runtime.reference_step``). Factored params step
    as the oracle steps them, their statistics in the param's dtype."""
    vector, kind = rule.vector_state, rule.vector_kind
    vector_scale = scale_name(vector)
    full_states, grads = [], []
    for p, state in zip(params, states):
        if vector in state:
            full_states.append({"step": state["step"], vector: dequantize(state[vector], state[vector_scale], kind, p)})
            grads.append(p.grad.float())
        else:
            full_states.append(state)
            grads.append(p.grad)
    rule.reference(params, grads, full_states, group)  # the step counters are the states' own: counted once
    for state, full_state in zip(states, full_states):
        if vector in state:
            quantize(full_state[vector], kind, state[vector], state[vector_scale])


def sharded_initial_state(rule, param: DTensor) -> dict:
    """``initial_state`` of an FSDP2 param (a DTensor split along dim 0, ``optim.shards``): each state a
    DTensor over this rank's part, as torch.distributed.checkpoint saves and reshards it. The row
    statistics of a matrix, and both statistics of a stack (dim 0 counts its matrices), are split as
    the param's dim 0; a matrix's column statistics, summed over the shards, are the same on every
    rank: replicated, so DCP saves them once and loads them on any mesh."""
    shard = local(param)
    if param.dim() <= 1:
        return {"step": torch.tensor(0.0, dtype=torch.float32),
                rule.vector_state: _placed(torch.zeros_like(shard), param, param.placements, param.shape)}
    state = initial_state(rule, shard)
    columns = [Replicate()] if param.dim() == 2 else param.placements
    return {"step": state["step"],
            rule.row_state: _placed(state[rule.row_state], param, param.placements, (*param.shape[:-1], 1)),
            rule.column_state: _placed(state[rule.column_state], param, columns,
                                       (*param.shape[:-2], 1, param.shape[-1]))}


def _placed(shard, param, placements, shape) -> DTensor:
    shape = torch.Size(shape)
    strides = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(shard, param.device_mesh, placements, run_check=False, shape=shape, stride=strides)


__all__ = ["FactoredOptimizer", "factored_optimizer", "initial_state", "quantized_reference_step"]
