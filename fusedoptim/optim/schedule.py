"""The piecewise-linear learning-rate schedule of Tiger's original (bojone/tiger's piecewise_linear).

A schedule is a dict {step: multiplier}: linear between the given points, constant after the last,
and starting from (0, 0) unless the first key is 0; {1000: 1, 2000: 0.1} warms up from 0 to 1 over
1000 steps, decays to 0.1 by step 2000 and stays there. Tiger evaluates it inside its kernel from the
device step counter (``kernels.tiger.piecewise_linear``); ``PiecewiseLinearLR`` gives every other
rule the same schedule as a torch.optim.lr_scheduler.
"""
import math
import numbers

from torch.optim.lr_scheduler import LambdaLR


def schedule_points(schedule) -> tuple:
    """The schedule as sorted (step, multiplier) float pairs, with (0, 0) first unless a key is 0.

    Steps are read as the original reads them, through int(): an int, a whole float (4.0) or a string
    of an integer ("4", as a JSON or YAML config gives it). A fractional step (4.5) is refused, where
    the original would truncate it to 4: a schedule point computed as a fraction of a run is moved
    silently by a truncation. Raises ValueError, saying what is wrong, for anything that is not a
    non-empty dict of steps >= 0, each given once, to finite multipliers >= 0.
    """
    if not isinstance(schedule, dict) or not schedule:
        raise ValueError("must be a non-empty dict {step: multiplier}, e.g. {0: 1} (constant) or {1000: 1, 2000: 0.1}")
    points = {}
    for key, multiplier in schedule.items():
        step = _step(key)
        if step in points:
            raise ValueError(f"gives step {step} twice (keys {next(k for k in schedule if _step(k) == step)!r} and "
                             f"{key!r}); give each step once")
        if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real) or not 0 <= multiplier < float("inf"):
            raise ValueError(f"must map each step to a finite number >= 0, not step {key!r} to {multiplier!r}")
        points[step] = float(multiplier)
    points = sorted((float(step), multiplier) for step, multiplier in points.items())
    if points[0][0] != 0.0:
        points.insert(0, (0.0, 0.0))
    return tuple(points)


def _step(key) -> int:
    """A schedule key as the step it names (see schedule_points)."""
    step, detail = None, ""
    if isinstance(key, str):
        try:
            step = int(key)
        except ValueError:
            pass
    elif isinstance(key, numbers.Integral) and not isinstance(key, bool):
        step = int(key)
    elif isinstance(key, numbers.Real) and not isinstance(key, bool) and math.isfinite(key):
        if float(key).is_integer():
            step = int(key)
        elif key > 0:
            detail = f"; the original would truncate it to {int(key)} through int(): write that if it is meant"
    if step is None or step < 0:
        raise ValueError(f"must have integer steps >= 0 as keys (an int, a whole float such as 4.0 or a string "
                         f"such as \"4\"), not {key!r}{detail}")
    return step


def piecewise_linear(step: float, schedule) -> float:
    """The schedule's multiplier at ``step`` (the original's piecewise_linear with from_zero=True)."""
    points = schedule_points(schedule)
    for (step_begin, begin), (step_end, end) in zip(points, points[1:]):
        if step < step_end:
            return begin + (end - begin) * (step - step_begin) / (step_end - step_begin)
    return points[-1][1]


class PiecewiseLinearLR(LambdaLR):
    """Each group's lr = its initial lr × piecewise_linear(scheduler steps, schedule), for any optimizer.

    The lr is set on the host, as every torch scheduler does: the fused kernels take it as a float
    (or fill a tensor lr in place), so a changing lr neither recompiles nor syncs.
    """

    def __init__(self, optimizer, schedule, last_epoch=-1):
        try:
            schedule_points(schedule)  # raise here, not at the first step
        except ValueError as error:
            raise ValueError(f"PiecewiseLinearLR: invalid schedule={schedule!r}: the schedule {error}") from None
        self.schedule = dict(schedule)
        super().__init__(optimizer, lambda step: piecewise_linear(step, self.schedule), last_epoch)
