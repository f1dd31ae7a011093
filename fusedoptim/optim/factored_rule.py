"""The declaration of a rule of the factored shape (``optim.rule.SHAPES``): a second-moment-like statistic
V of each param kept, for a param of 2+ dims [..., n, m], as its row and column statistics R [..., n, 1]
and C [..., 1, m], O(n + m) for a matrix, read by the element-wise update as V̂_ij = R_i C_j / mean(R)
(the factored estimate, exact for a rank-one V); a vector or a scalar keeps V element-wise. Its class is
made from it (``optim.factored.factored_optimizer``) and its registry row too (``factored_row``): a
factored rule is its math (kernels), its oracle and this declaration.

The shape's step, for each param θ with gradient g (w the statistics' weight, s the rule's step size):

    t ← t + 1;  q = term(g)                                     (the element-wise term, e.g. g²)
    R ← lerp(R, mean_j q, w_t);  C ← lerp(C, mean_i q, w_t)     (row and column reductions, O(n + m))
    V̂_ij = R_i C_j / max(mean R, floor)   (a vector: V ← lerp(V, q, w_t), V̂ = V)
    θ ← update(θ, g, V̂, s_t)                                    (element-wise, the rule's math)

with s_t = step_size(t, Σθ², Σu²): per-tensor sums of θ² and of the update's square (Adafactor's RMS(θ)
and RMS clipping), which the rule's math returns where it declares them.
"""
import functools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch

from fusedoptim.optim.factored import factored_optimizer
from fusedoptim.optim.rule import ShapedRule


class FactoredMath(NamedTuple):
    """A factored rule's ``@triton.jit`` functions for the multi-tensor launcher (signature
    ``(param, grad, states, scalars, hyper, FLAGS)``, as ``kernels.adafactor``'s), by phase:"""

    row_sums: Callable  # reduce of a factored tensor: (θ², term): Σθ² per tensor, Σ term per row (the last)
    column_sums: Callable  # (grad, out): adds Σ_i term[..., i, j] into out [..., 1, m] (a Triton launch)
    factored_update: Callable  # θ from (step size, R_i / max(mean R, floor), C_j): (θ', ())
    vector_update: Callable  # θ and V from (V, the weight w_t, step size): (θ', (V',))
    # Optional, for a step size that reads Σθ² of a vector and Σu² (None: not computed, read as 0):
    vector_sums: Optional[Callable] = None  # (w_t, outputs...): (θ², u²)
    factored_sums: Optional[Callable] = None  # (R_i / max(mean R, floor), C_j): (u²,)


@dataclass(frozen=True, eq=False)
class FactoredRule:
    name: str  # the class's name
    summary: str  # one line: what the rule does, and its paper
    doc: str  # the class's docstring, help(fo.<name>): each argument, its default and meaning
    reference: Callable  # the oracle of the whole step, rule(params, grads, states, group), per tensor
    defaults: dict  # the positional arguments, in signature order, with their defaults
    # Checks every argument (ValueError naming it, at construction) -> the group's defaults (the class's
    # DEFAULTS are those of the declared defaults).
    checked: Callable
    math: FactoredMath
    hyper: Callable  # (group, lr, floor) -> (hyper, FLAGS), the kernels' scalars and constexpr flags
    weight: Callable  # (group, t) -> w_t, the statistics' lerp weight at step t (Adafactor's t^τ)
    floor: Callable  # (group, params) -> the floor of mean(R) (Adafactor's ε₁)
    step_size: Callable  # (group, lr, t, numel, Σθ², Σu²) -> the per-tensor scalar the updates read
    keyword_only: dict = field(default_factory=dict)  # arguments after a "*", before the engine's options
    # The states, as the torch twin names them; the vector's statistic may be int8/int4 (kept as codes of
    # this quantization scheme, ``optim.quantization``); R and C stay in the param's dtype (O(n + m)).
    row_state: str = "row_var"
    column_state: str = "col_var"
    vector_state: str = "variance"
    vector_kind: str = "nonnegative"
    torch_twin: Optional[type] = None
    # For the tests of the shape (tests/test_factored_rules.py): bad arguments, each (kwargs, words of the
    # error); and the tolerances of the fused step against the oracle (fp32).
    bad_arguments: tuple = ()
    tolerances: dict = field(default_factory=lambda: dict(rtol=1.3e-6, atol=1e-5))

    @functools.cached_property
    def optimizer(self) -> type:
        """The class, made once (``fo.<name>`` is this one)."""
        return factored_optimizer(self)

    @property
    def states(self) -> tuple:
        return ("step", self.row_state, self.column_state, self.vector_state)

    def state_bytes(self, group, shapes, param_dtype) -> int:
        """Bytes of state kept for params of these shapes after a step: a 4-byte step each; for a param of
        2+ dims [..., n, m] its row and column statistics, numel/m + numel/n values (O(n + m) for a matrix);
        else its statistic, numel values; in the param's dtype, as torch keeps them."""
        element = torch.empty((), dtype=param_dtype).element_size()
        total = 0
        for shape in map(torch.Size, shapes):
            factored = len(shape) >= 2 and shape.numel()
            values = shape.numel() // shape[-1] + shape.numel() // shape[-2] if factored else shape.numel()
            total += 4 + values * element
        return total


def factored_row(rule: FactoredRule) -> ShapedRule:
    """The registry's row of a factored rule (``optim.registry.SHAPED_RULES``), its class made from it."""
    return ShapedRule(name=rule.name, shape="factored", summary=rule.summary, optimizer=rule.optimizer,
                      reference=rule.reference, torch_twin=rule.torch_twin, state_bytes=rule.state_bytes)


__all__ = ["FactoredMath", "FactoredRule", "factored_row"]
