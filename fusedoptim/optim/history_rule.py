"""The declaration of a rule of the history shape (``optim.rule.SHAPES``): a rule that needs a closure
and keeps a history of past vectors (curvature pairs). Its class is made from it
(``optim.history.history_optimizer``) and its registry row too (``history_row``): a history rule is its
math (``optim.reference.history.HistoryMath``: history update, direction, step length, written once
over the vector operations), its oracle and this declaration.

The shape's step (``optim.reference.history``, torch.optim.LBFGS's loop), per ``step(closure)``:

    f, g ← closure();  d ← −g at the first iteration ever, else
    H ← update_history(H, s = t·d, y = g − g_prev);  d ← direction(g, H)
    t ← step_length(g, lr, H, first) (or the strong Wolfe search);  θ ← θ + t·d;  f, g ← closure()

up to max_iter iterations, stopping at torch's tolerances.
"""
import functools
from dataclasses import dataclass
from typing import Callable, Optional

from fusedoptim.optim.history import history_optimizer
from fusedoptim.optim.reference.history import HistoryMath
from fusedoptim.optim.rule import ShapedRule

# The arguments the shape's step reads, first in every history rule's signature, as torch.optim.LBFGS orders them.
SHAPE_ARGUMENTS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change")


@dataclass(frozen=True, eq=False)
class HistoryRule:
    name: str  # the class's name
    summary: str  # one line: what the rule does, and its paper
    doc: str  # the class's docstring, help(fo.<name>): each argument, its default and meaning
    # The arguments in signature order, with their defaults: SHAPE_ARGUMENTS first, then the rule's own
    # (``line_search_fn`` among them gives the rule the strong Wolfe search).
    defaults: dict
    # The rule's own checks, arguments -> the group's values (ValueError naming the argument, at construction).
    checked: Callable
    math: HistoryMath  # its history, history update, direction and step length, over the vector operations
    # The oracle of the whole step, reference(closure, vectors, state, group) -> the first loss, run on
    # ``FlatVectors`` (``history_step`` with ``math``: L-BFGS's is torch's step, bit for bit).
    reference: Callable
    # Bytes of state once the history is full, (group, param shapes, param dtype) -> int: the memory model.
    state_bytes: Callable
    torch_twin: Optional[type] = None
    scratch: tuple = ()  # names in the history that are the direction's scratch (L-BFGS's α_i), last in STATE
    # For the tests of the shape (tests/test_history_rules.py): bad arguments, each (kwargs, words of the error).
    bad_arguments: tuple = ()

    def __post_init__(self):
        if tuple(self.defaults)[:len(SHAPE_ARGUMENTS)] != SHAPE_ARGUMENTS:
            raise ValueError(f"{self.name}: a history rule's arguments start with {SHAPE_ARGUMENTS}, the shape's; "
                             f"got {tuple(self.defaults)}")

    @property
    def history(self) -> tuple:
        return self.math.history

    @functools.cached_property
    def optimizer(self) -> type:
        """The class, made once (``fo.<name>`` is this one)."""
        return history_optimizer(self)


def history_row(rule: HistoryRule) -> ShapedRule:
    """The registry's row of a history rule (``optim.registry.SHAPED_RULES``), its class made from it."""
    return ShapedRule(name=rule.name, shape="history", summary=rule.summary, optimizer=rule.optimizer,
                      reference=rule.reference, torch_twin=rule.torch_twin, state_bytes=rule.state_bytes)


__all__ = ["HistoryRule", "SHAPE_ARGUMENTS", "history_row"]
