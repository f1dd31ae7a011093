"""A rule's hyperparameters, each declared once: its name and default, its check, a few bad values,
and whether a tensor may hold it. From these come the class signature (optim.base.optimizer_class),
the checks at construction, in an added group and at every step (optim.validation), and the cases of
the bad-input tests: a rule adds its own hyperparameters without touching a shared table, and two
rules' hyperparameters of one name (Adam's betas, a three-beta rule's) never share a check.

A check is ``check(value, group) -> problem or None``; the problem reads after the name ("lr must be
>= 0"). Numbers are read with ``number``, which refuses inf and NaN: a tensor's value is read only where a host
sync is fine (construction, an added group, a loaded checkpoint), never by the check run at each step.

The kernels read hyperparameters by name: ``hyper.lr``, ``hyper.beta1``, ``FLAGS.AMSGRAD``
(optim.registry.Rule.kernel_arguments builds the two named tuples from these declarations).
"""
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from fusedoptim.optim.param_groups import PARAM_KINDS
from fusedoptim.optim.schedule import schedule_points


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    default: Any
    check: Callable[[Any, dict], Optional[str]]
    # What it is, for a user: the class's help lists each argument with this sentence (optim.base).
    doc: str
    bad: tuple = ()  # (a bad value, text its error must contain): the bad-input tests' cases
    # A one-element floating-point tensor may hold it (each of a pair's two): the kernels read it through a pointer
    # (kernels.hyperparameter), so a tensor changed in place is read on the device at every step.
    # Any other hyperparameter is a number or a compile-time choice, where a tensor would cost a sync.
    tensor: bool = False
    # How the value reaches the kernels: "number" as hyper.<name> (a float, or the tensor itself: Triton
    # does not specialise floats, so a new value never recompiles); "flag" as FLAGS.<NAME>, a
    # compile-time choice (one compiled variant per value); "host" not at all (Tiger's param_kind).
    kernel: str = "number"
    # Any other mapping: value -> (fields of hyper, fields of FLAGS), e.g. betas -> beta1, beta2.
    to_kernel: Optional[Callable] = None
    # What the registry-driven tests step with: a value that makes its code path run and moves 16-bit
    # params by more than their rounding (None: the default), and values run as variants of their own.
    test_value: Any = None
    test_variants: tuple = ()
    # Not an argument of the class: recorded at construction from the arguments given, then a group
    # value like any other (Lion's lr at construction: lion-pytorch's decoupled decay is relative to it).
    recorded: Optional[Callable[[dict], Any]] = None

    def kernel_fields(self, value) -> tuple:
        if self.to_kernel is not None:
            return self.to_kernel(value)
        if self.kernel == "flag":
            return {}, {self.name.upper(): value}
        if self.kernel == "host":
            return {}, {}
        return {self.name: value if isinstance(value, torch.Tensor) else float(value)}, {}


def number(value, finite: bool = True) -> float:
    """The value as a float; with ``finite``, inf and NaN refused: the first step would turn every
    param it moves to inf or NaN (torch.optim accepts them, and does)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError("a tensor hyperparameter must be a one-element floating-point tensor")
        result = value.item()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"expected a real number, got {type(value).__name__}")
    else:
        result = float(value)
    if finite and not math.isfinite(result):
        raise ValueError(f"must be finite, got {result}: the first step would turn the params to inf or NaN; "
                         "give a finite value")
    return result


def at_least_zero(value, group):
    if not number(value) >= 0.0:  # written so that NaN fails too
        return "must be >= 0"


def above_zero(value, group):
    if not number(value) > 0.0:  # written so that NaN fails too
        return "must be > 0"


def fraction(value, group):
    if not 0.0 <= number(value) < 1.0:
        return "must be in [0, 1)"


def at_most_one(value, group):
    if not 0.0 <= number(value) <= 1.0:
        return "must be in [0, 1]"


def shrink(value, group):
    if not 0.0 < number(value) <= 1.0:
        return "must be in (0, 1]"


def fractions(value, names: tuple):
    """Betas named ``names``, each in [0, 1); what is wrong, or None."""
    if not isinstance(value, (tuple, list)) or len(value) != len(names):
        return f"must be a {('pair', 'triple')[len(names) - 2]} ({', '.join(names)})"
    for i, beta in enumerate(value):
        if not 0.0 <= number(beta) < 1.0:
            return f"must have each beta in [0, 1); beta{i + 1}={beta}"


def pair_of_fractions(value, group):
    return fractions(value, ("beta1", "beta2"))


def triple_of_fractions(value, group):
    """AdEMAMix's (β1, β2, β3)."""
    return fractions(value, ("beta1", "beta2", "beta3"))


def boolean(value, group):
    if not isinstance(value, bool):
        return "must be True or False"


def positive_integer(value, group):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        return "must be an integer >= 1"


def integer_at_least_zero(value, group):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        return "must be an integer >= 0"


def open_fraction(value, group):
    """A coefficient in (0, 1): Schedule-Free's eval switch divides by it (x = y + (1 − 1/β)·(z − y))."""
    if not 0.0 < number(value) < 1.0:
        return "must be in (0, 1) (exclusive: optimizer.eval() divides by it)"


def pair_of_interpolations(value, group):
    """Schedule-Free AdamW's (β1, β2): β1 in (0, 1), which eval() divides by; β2 in [0, 1)."""
    problem = pair_of_fractions(value, group)
    if problem is None and not number(value[0]) > 0.0:
        return f"must have beta1 in (0, 1): optimizer.eval() divides by it; beta1={value[0]}"
    return problem


def optional_warmup(value, group):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        return "must be None (no warm-up) or an integer >= 1"


def nesterov(value, group):
    if not isinstance(value, bool):
        return "must be True or False"
    if value and not (number(group["momentum"]) > 0 and number(group["dampening"]) == 0):
        return "needs momentum > 0 and dampening = 0 (as in torch.optim.SGD)"


def cautious(value, group):
    if not isinstance(value, bool):
        return "must be True or False"
    if value and "momentum" in group and number(group["momentum"]) == 0:
        return ("needs momentum > 0: caution masks the momentum's step where it disagrees with the gradient, "
                "and without momentum the step is the gradient itself")
    if value and group.get("grad_accum_steps", 1) != 1:
        return ("needs grad_accum_steps=1: caution compares the step with the gradient, and a micro-step "
                "holds only its micro-batch's share of it; accumulate the gradients yourself instead")


def bounds(value, group):
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return "must be None or a pair (low, high)"
    low, high = number(value[0]), number(value[1], finite=False)  # high=inf: no upper clip, harmless
    if not 0.0 < low <= high:
        return f"must have 0 < low <= high; got low={low}, high={high}"


def schedule(value, group):
    schedule_points(value)  # raises ValueError with what is wrong


def param_kind(value, group):
    if value not in ("auto", *PARAM_KINDS):
        return f"must be one of {['auto', *PARAM_KINDS]} (optim.tiger_param_groups(model) sets it per module)"


# The hyperparameters several rules share, with their usual bad values.
NEGATIVE_OR_NON_FINITE = ((-1e-3, "must be >= 0"), (math.nan, "must be finite"), (math.inf, "must be finite"))
ZERO_OR_NON_FINITE = ((0.0, "must be > 0"), (-1e-3, "must be > 0"), (math.nan, "must be finite"),
                      (math.inf, "must be finite"))


def etas_around_one(value, group):
    """Rprop's (etaminus, etaplus): a step size shrinks where the gradient flips and grows where it holds."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return "must be a pair (etaminus, etaplus)"
    etaminus, etaplus = number(value[0]), number(value[1])
    if not 0.0 < etaminus < 1.0 < etaplus:
        return (f"must have 0 < etaminus < 1 < etaplus (as torch.optim.Rprop); got etaminus={etaminus}, "
                f"etaplus={etaplus}")


def step_size_range(value, group):
    """Rprop's (step_size_min, step_size_max), the clamp of every step size (torch checks none; a
    negative or inverted range clamps nothing the way it reads)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return "must be a pair (step_size_min, step_size_max)"
    low, high = number(value[0]), number(value[1], finite=False)  # high=inf: no upper clamp, harmless
    if not 0.0 <= low <= high:
        return f"must have 0 <= step_size_min <= step_size_max; got step_size_min={low}, step_size_max={high}"


def lr(default: float, doc: str = "the learning rate", zero: bool = True) -> Hyperparameter:
    """``zero``: whether lr=0 (a frozen run) is accepted; not where the torch twin refuses it (SparseAdam)."""
    return Hyperparameter("lr", default, at_least_zero if zero else above_zero, doc, tensor=True,
                          test_value=max(default, 1e-2), bad=(
        *(NEGATIVE_OR_NON_FINITE if zero else ZERO_OR_NON_FINITE), ("fast", "expected a real number"),
        (torch.tensor([1e-3, 1e-3]), "one-element"), (torch.tensor(1e-3, device="meta"), "meta device")))


def nonnegative(name: str, default: float, doc: str, **options) -> Hyperparameter:
    return Hyperparameter(name, default, at_least_zero, doc, bad=((-0.1, "must be >= 0"), (math.inf, "must be finite")),
                          **options)


def flag(name: str, doc: str, default: bool = False) -> Hyperparameter:
    return Hyperparameter(name, default, boolean, doc, kernel="flag",
                          bad=(("yes", "True or False"), (1, "True or False")))


def _number_or_tensor(value):
    return value if isinstance(value, torch.Tensor) else float(value)


def betas(default: tuple, doc: str = "(β1, β2): the decay rates of the running means of the gradient and of "
                                       "its square", check=pair_of_fractions, bad=()) -> Hyperparameter:
    """Two floats, or two one-element tensors (read on the device, as torch's capturable Adam reads them)."""
    return Hyperparameter("betas", default, check, doc, tensor=True, bad=(
        *bad, ((0.9, 1.0), "beta2"), ((-0.1, 0.99), "beta1"), ((0.9,), "pair"),
        ((0.9, torch.tensor(0.99)), "all numbers or all tensors"),
        ((torch.tensor([0.9, 0.9]), torch.tensor(0.99)), "one-element")),
        to_kernel=lambda value: ({"beta1": _number_or_tensor(value[0]), "beta2": _number_or_tensor(value[1])}, {}))


def momentum(default: float, present=lambda value: value != 0) -> Hyperparameter:
    """A momentum coefficient; FLAGS.HAS_MOMENTUM: whether ``present`` (torch keeps no buffer without it)."""
    return Hyperparameter("momentum", default, at_least_zero,
                          "the momentum factor (0: no momentum buffer is kept)",
                          test_value=0.9, bad=(
        (-0.9, "must be >= 0"), (math.inf, "must be finite"), (torch.tensor(0.9), "must be a Python number")),
        to_kernel=lambda value: ({"momentum": float(value)}, {"HAS_MOMENTUM": bool(present(value))}))


def bounds_in_kernel(value) -> tuple:
    """None -> no clipping (FLAGS.HAS_BOUNDS False); (low, high) -> hyper.low, hyper.high."""
    low, high = (0.0, 0.0) if value is None else (float(value[0]), float(value[1]))
    return {"low": low, "high": high}, {"HAS_BOUNDS": value is not None}


def schedule_in_kernel(value) -> tuple:
    """FLAGS.SCHEDULE: the schedule's points flattened (step0, multiplier0, step1, ...), compile-time."""
    return {}, {"SCHEDULE": sum(schedule_points(value), ())}


COUPLED = "the L2 penalty λ, added to the gradient: g ← g + λ·θ"
DECOUPLED = "the decoupled weight decay λ: θ ← θ·(1 − lr·λ) before the update"


def weight_decay(default: float = 0.0, doc: str = COUPLED) -> Hyperparameter:
    return nonnegative("weight_decay", default, doc, test_value=0.1)


def eps(default: float, doc: str = "added to the denominator for numerical stability",
        zero: bool = True) -> Hyperparameter:
    """``zero``: whether eps=0 is accepted; not where the torch twin refuses it (SparseAdam)."""
    if zero:
        return nonnegative("eps", default, doc)
    return Hyperparameter("eps", default, above_zero, doc, bad=((0.0, "must be > 0"), (math.inf, "must be finite")))


# The train/eval mode of a rule with Modes (optim.rule): recorded, not an argument; a new optimizer trains.
TRAIN_MODE = Hyperparameter("train_mode", True, boolean, "True while the params hold the training point "
                            "(optimizer.train()), False while they hold the evaluation point (optimizer.eval()); "
                            "not an argument", kernel="host", recorded=lambda arguments: True)

MAXIMIZE = flag("maximize", "maximize the objective instead of minimizing it (the gradient's sign flipped)")
# Caution (Liang et al. 2024), on every momentum rule that declares it with the sum ``optim.rule.caution``:
# its update and reduce run ``kernels.elementwise.cautious`` and ``agreement`` on the same step.
CAUTIOUS = Hyperparameter("cautious", False, cautious, "mask the step where it disagrees in sign with the "
                          "gradient and divide it by the fraction kept, max(mean(mask), 1e-3) over the tensor "
                          "(Liang et al. 2024, \"Cautious Optimizers\"); weight decay is not masked",
                          kernel="flag", bad=(("yes", "True or False"), (1, "True or False")))
