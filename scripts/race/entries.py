"""The race's entries: one per rule of the registry as it is when the race runs (element-wise rows and
shaped rules alike), plus the scheduled variants the claims ask for, and how each is built on a model.

Nothing here names a rule: what an entry can run, and how, follows from its row's capabilities.

- A row that takes sparse gradients only, or needs params ≥ 0 from the start, cannot train the tasks'
  dense, signed models: it is entered with that reason and not run.
- A shaped rule that takes only some params (``ShapedRule.takes``: Muon's matrices) steps those, and
  COMPANION at its row's default lr steps the rest, as torch's documentation and Muon's authors do.
- A rule whose shape re-evaluates a closure (L-BFGS) gets one on the same minibatch, and one evaluation
  per step (``max_iter=1``): the budget counts gradient evaluations, one per step for every entry.
- A row with its own param groups (Tiger's classes of tensors) gets them from the model.
"""
from typing import NamedTuple, Optional

import torch

from fusedoptim import optim
from fusedoptim.optim.registry import RULES, SHAPED_RULES

COMPANION = "AdamW"  # steps the params a shaped rule does not take, at its row's default lr
CLOSURE_SHAPES = ("history",)  # optim.rule.SHAPES whose update re-evaluates a closure
ONE_EVALUATION_PER_STEP = dict(max_iter=1)  # the same gradient budget as every other entry


class Entry(NamedTuple):
    name: str  # as the table shows it
    row: object  # its optim.registry row (Rule or ShapedRule)
    schedule: Optional[str] = None  # "cosine": torch.optim.lr_scheduler.CosineAnnealingLR to 0 over the run
    reason: str = ""  # why it cannot run the tasks ("" where it can)

    @property
    def default_lr(self) -> float:
        return float(self.row.defaults["lr"])

    @property
    def needs_closure(self) -> bool:
        return getattr(self.row, "shape", None) in CLOSURE_SHAPES


def refusal(row) -> str:
    """Why ``row`` cannot train the tasks' models, "" where it can."""
    if getattr(row, "only_sparse_gradients", False):
        return "takes sparse gradients only (only_sparse_gradients); the tasks' gradients are dense"
    if getattr(row, "nonnegative_params", False):
        return "needs params ≥ 0 from the start (nonnegative_params); the tasks' weights are signed"
    return ""


def all_entries(scheduled=()) -> dict:
    """Every row of the registry now, then ``scheduled``: (row name, schedule) pairs, e.g. the claims'."""
    rows = {**RULES, **SHAPED_RULES}
    entries = {name: Entry(name, row, reason=refusal(row)) for name, row in rows.items()}
    for name, schedule in scheduled:
        if name in rows:
            entries[f"{name} + {schedule}"] = Entry(f"{name} + {schedule}", rows[name], schedule, refusal(rows[name]))
    return entries


def select(entries: dict, names=None) -> dict:
    """``names`` (None: all) from ``entries``, or a clear error naming the unknown ones."""
    if not names:
        return entries
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise ValueError(f"--rules: no entry named {', '.join(unknown)}; the entries are {', '.join(entries)}")
    return {name: entries[name] for name in names}


def optimizer_class(row):
    return getattr(row, "optimizer", None) or getattr(optim, row.name)


def build(entry: Entry, model: torch.nn.Module, lr: float, impl: str = "reference", state_dtype=None) -> list:
    """The optimizers that step ``model`` for ``entry`` at ``lr``: the rule's, and COMPANION's for the
    params it does not take. ``state_dtype`` (e.g. "int8") goes to every one of them; a TypeError or
    ValueError says the rule refuses it."""
    row = entry.row
    options = dict(impl=impl) if state_dtype is None else dict(impl=impl, state_dtype=state_dtype)
    if entry.needs_closure:
        options.update(ONE_EVALUATION_PER_STEP)
    takes = getattr(row, "takes", lambda param: True)
    taken = [param for param in model.parameters() if takes(param)]
    rest = [param for param in model.parameters() if not takes(param)]
    param_groups = getattr(row, "param_groups", None)
    optimizers = [optimizer_class(row)(param_groups(model) if param_groups and not rest else taken, lr=lr, **options)]
    if rest:
        companion = RULES[COMPANION]
        options.pop("max_iter", None)
        optimizers.append(optimizer_class(companion)(rest, lr=companion.defaults["lr"], **options))
    return optimizers


def schedulers(entry: Entry, optimizers: list, steps: int) -> list:
    if entry.schedule is None:
        return []
    if entry.schedule == "cosine":
        return [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) for optimizer in optimizers]
    raise ValueError(f"{entry.name}: schedule {entry.schedule!r} is not one of ('cosine',)")


def switchable(optimizer) -> bool:
    """A schedule-free optimizer: its params hold the training point until eval() swaps in the average."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
