"""``LBFGS``: torch.optim.LBFGS's twin, with its arguments, its state (a state_dict loads both ways)
and its closure evaluations. Its equations are the oracle's (``optim.reference.lbfgs``).

L-BFGS is a rule of the history shape: this module is its declaration (``LBFGS_RULE``), from which its
class and its row in ``optim.registry.SHAPED_RULES`` are made (``optim.history_rule``); the engine of
the shape (``optim.history``) runs its step, its vector operations as the oracle's flat vectors or as
multi-tensor launches (``kernels.lbfgs``; docs/lbfgs.md). Its interface is the class's arguments
(``LBFGS.DEFAULTS``), its impls (``LBFGS.IMPLS``) and ``LBFGS.STATE``, the names of its state, all in
the first param's state, as torch keeps them.
"""
import numbers

import torch

from fusedoptim.optim.history import FusedVectors
from fusedoptim.optim.history_rule import HistoryRule
from fusedoptim.optim.reference.lbfgs import LBFGS_MATH, lbfgs_step

LINE_SEARCHES = (None, "strong_wolfe")

DOC = """L-BFGS (Liu & Nocedal 1989), torch.optim.LBFGS's twin: the same arguments, defaults, state and
    closure evaluations; its equations in ``fusedoptim.optim.reference.lbfgs``. One param group only,
    every param on one device, as torch's.

    lr=1: the step length (the first iteration's is min(1, 1/‖g‖₁)·lr); a float or a 1-element tensor.
    max_iter=20: iterations per ``step(closure)``.
    max_eval=None: evaluations of the closure per step; None is max_iter·5//4.
    tolerance_grad=1e-7: a step stops where ‖g‖_∞ ≤ tolerance_grad.
    tolerance_change=1e-9: ... or where ⟨g, d⟩, ‖t·d‖_∞ or the change of the loss fall below it.
    history_size=100: the (s, y) pairs kept.
    line_search_fn=None: None (the fixed step t) or "strong_wolfe".
    impl="auto" (keyword-only): "reference" runs the oracle on flat vectors, as torch; "triton" the
        vector operations as multi-tensor launches (fp32 or complex64 contiguous params on one CUDA
        device, or the CPU with TRITON_INTERPRET=1); "auto" the kernels where they run, the reference
        elsewhere. Settable on a built optimizer, checked.

    ``step(closure)`` needs ``closure``, which zeroes the gradients, recomputes the loss, calls
    backward and returns the loss; it returns the closure's first loss.
    """


def checked(arguments) -> dict:
    """history_size an integer ≥ 1; line_search_fn one torch knows (torch refuses it at the first step,
    after the closure: here at construction)."""
    history_size, line_search_fn = arguments["history_size"], arguments["line_search_fn"]
    if isinstance(history_size, bool) or not isinstance(history_size, numbers.Integral) or history_size < 1:
        raise ValueError(f"LBFGS: history_size={history_size!r} must be an integer ≥ 1")
    if line_search_fn not in LINE_SEARCHES:
        raise ValueError(f"LBFGS: line_search_fn={line_search_fn!r} must be one of {LINE_SEARCHES}")
    return arguments


def lbfgs_state_bytes(group, shapes, param_dtype) -> int:
    """Bytes of state once the history is full, for params of these shapes (N elements in all, fp32, as
    the kernels keep them): the direction d and the previous gradient (2N), history_size pairs (s, y)
    (2·h·N), and 0-d tensors: H_diag, ρ and α of each pair."""
    numel, history = sum(torch.Size(shape).numel() for shape in shapes), group["history_size"]
    return 4 * ((2 + 2 * history) * numel + 1 + 2 * history)


LBFGS_RULE = HistoryRule(
    name="LBFGS",
    summary="Limited-memory BFGS: the two-loop recursion over the last history_size steps, a fixed step or a "
            "strong Wolfe line search (Liu & Nocedal 1989)",
    doc=DOC,
    defaults=dict(lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9, history_size=100,
                  line_search_fn=None),
    checked=checked, math=LBFGS_MATH, reference=lbfgs_step, state_bytes=lbfgs_state_bytes,
    torch_twin=torch.optim.LBFGS, scratch=("al",),
    bad_arguments=((dict(history_size=0), "history_size=0 must be an integer ≥ 1"),
                   (dict(line_search_fn="armijo"), "line_search_fn='armijo'")),
)
LBFGS = LBFGS_RULE.optimizer
LBFGS.LINE_SEARCHES = LINE_SEARCHES

__all__ = ["FusedVectors", "LBFGS", "LBFGS_RULE", "lbfgs_state_bytes"]
