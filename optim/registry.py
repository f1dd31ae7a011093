"""The registry: one row per update rule. Classes, tests, benchmarks and the tuner iterate it.

Adding a rule is one kernel file (kernels/<rule>.py), one reference function (optim/reference/),
one row here and one export in optim/__init__.py.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from kernels.adam import adam_arguments, adam_update, adamw_arguments
from kernels.lion import lion_arguments, lion_update
from kernels.tiger import tiger_arguments, tiger_tensor_scalars, tiger_update
from optim.reference.adam import adam, adamw
from optim.reference.lion import lion
from optim.reference.tiger import tiger

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class State:
    """One element-wise state tensor, shaped like its param."""

    name: str
    when: Optional[str] = None  # a group flag that must be True for the state to exist (amsgrad)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Kernel against reference, both fp32 math: they differ only by the order of fp32 operations (fused
# multiply-adds, exp2/log2 for beta ** step), a few ulps of fp32. Stored in half precision, such a
# difference can round the other way: one ulp of the storage dtype (bf16 2^-8 relative, fp16 2^-11),
# and over 7 steps the states can carry a few of those forward.
TOLERANCES = {
    torch.float32: Tolerance(atol=1e-6, rtol=1e-5),
    torch.bfloat16: Tolerance(atol=1e-2, rtol=2e-2),
    torch.float16: Tolerance(atol=2e-3, rtol=4e-3),
}


@dataclass(frozen=True)
class Rule:
    name: str  # the optimizer class's name
    summary: str  # one line: what the rule does, and its paper
    reference: Callable  # the oracle, rule(params, grads, states, group)
    update: Callable  # the @triton.jit math handed to kernels.multi_tensor_update
    kernel_arguments: Callable  # group -> (hyper tuple, compile-time flags tuple)
    defaults: dict  # argument names and defaults, in the order of the class signature
    states: tuple  # the element-wise State tensors
    scalar_states: tuple = ()  # per-param fp32 0-d tensors, e.g. "step"
    tensor_scalars: Optional[Callable] = None  # (group, params, grads, states) -> per-tensor fp32 scalars
    dtypes: tuple = DTYPES  # param dtypes the kernel supports
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))
    # Sign rules: where the momentum is within fp32 rounding of zero (about 1e-7 of its scale, so
    # about one element in 10^7 per step), a different fp32 operation order (GPU fused multiply-adds)
    # can take the opposite sign and move θ by 2·lr the other way. At most floor(fraction · numel)
    # elements of a tensor may differ: none in tensors under 10^4 elements, so that a lost element (a
    # tail the mask dropped) is never excused.
    sign_flip_fraction: float = 0.0
    extra_param_reads: int = 0  # passes over θ besides the update itself (Tiger's RMS)
    torch_twin: Optional[type] = None  # the torch.optim class this rule must match

    def state_names(self, group) -> tuple:
        return tuple(s.name for s in self.states if s.when is None or group[s.when])

    def bytes_per_param(self, group, param_dtype=torch.float32, state_dtype=None) -> int:
        """Bytes one step moves per parameter: θ and g read, θ written, each state read and written."""
        param_bytes = torch.empty((), dtype=param_dtype).element_size()
        state_bytes = torch.empty((), dtype=state_dtype or param_dtype).element_size()
        return param_bytes * (3 + self.extra_param_reads) + 2 * state_bytes * len(self.state_names(group))


ADAM_DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False)
ADAM_STATES = (State("exp_avg"), State("exp_avg_sq"), State("max_exp_avg_sq", when="amsgrad"))

RULES = {
    rule.name: rule
    for rule in (
        Rule(
            name="Adam",
            summary="Adaptive moments with bias correction, L2 weight decay (Kingma & Ba 2015)",
            reference=adam, update=adam_update, kernel_arguments=adam_arguments,
            defaults=ADAM_DEFAULTS, states=ADAM_STATES, scalar_states=("step",),
            torch_twin=torch.optim.Adam,
        ),
        Rule(
            name="AdamW",
            summary="Adam with decoupled weight decay θ ← θ(1 − ηλ) (Loshchilov & Hutter 2019)",
            reference=adamw, update=adam_update, kernel_arguments=adamw_arguments,
            defaults={**ADAM_DEFAULTS, "weight_decay": 1e-2}, states=ADAM_STATES, scalar_states=("step",),
            torch_twin=torch.optim.AdamW,
        ),
        Rule(
            name="Lion",
            summary="Sign of an interpolated momentum, decoupled decay (Chen et al. 2023)",
            reference=lion, update=lion_update, kernel_arguments=lion_arguments,
            defaults=dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0), states=(State("exp_avg"),),
            sign_flip_fraction=1e-4,
        ),
        Rule(
            name="Tiger",
            summary="Lion with β1 = β2, per-tensor lr, built-in accumulation, NaN guard (Su 2023)",
            reference=tiger, update=tiger_update, kernel_arguments=tiger_arguments,
            defaults=dict(lr=1e-3, beta=0.965, weight_decay=0.01, grad_accum_steps=1, shrink_ratio=0.99),
            states=(State("m"),), scalar_states=("step",), tensor_scalars=tiger_tensor_scalars,
            sign_flip_fraction=1e-4, extra_param_reads=1,
        ),
    )
}
