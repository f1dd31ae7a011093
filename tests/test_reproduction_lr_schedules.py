"""The seeds' lr schedules through torch.optim.lr_scheduler, and decay against a constant large lr for
Adam (scripts/reproductions/lr_schedules.py)."""
import math

import numpy
import pytest

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from scripts.reproductions import lr_schedules  # noqa: E402
from tests.conftest import run_reproduction  # noqa: E402

STEPS, REPLICATES = 400, 4  # the script runs 1000 steps and 5 replicates; every decay scales with the run
DECAYS = ("exponential", "natural exponential", "plateau", "warm-up + exponential", "piecewise linear")
# ExponentialLR multiplies the lr by γ once per step: t double roundings, far below 1e-12 relative.
SCHEDULER_ROUNDING = 1e-12


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_reproduction(lr_schedules, tmp_path_factory, steps=STEPS, replicates=REPLICATES)


def lr_of(results, name, step):
    """The lr that Adam's step ``step`` used (replicate 0: these schedules are shared)."""
    return results["runs"][name]["lr"][step, 0].item()


def chosen_steps(results):
    warmup = results["settings"]["warmup"]["warmup_steps"]
    return sorted({0, 1, warmup - 1, warmup, warmup + 1, STEPS // 2, STEPS - 1})


def test_writes_its_figure_and_numbers(results):
    assert (results["out"] / "lr_schedules.png").stat().st_size > 0
    rows = (results["out"] / "lr_schedules.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(results["runs"]) * REPLICATES


def test_constant_lrs(results):
    assert (results["runs"]["constant"]["lr"] == results["lr"]).all()
    small = results["lr"] * results["settings"]["small_factor"]
    assert ((results["runs"]["constant lr/100"]["lr"] - small).abs() <= SCHEDULER_ROUNDING * small).all()


def test_exponential_decay_is_the_seeds_formula(results):
    knobs, lr = results["settings"]["exponential"], results["lr"]
    for t in chosen_steps(results):  # decayed_learning_rate = learning_rate * decay_rate ^ (global_step / decay_steps)
        expected = lr * knobs["decay_rate"] ** (t / knobs["decay_steps"])
        assert lr_of(results, "exponential", t) == pytest.approx(expected, rel=SCHEDULER_ROUNDING), t


def test_natural_exponential_decay_is_the_seeds_formula(results):
    knobs, lr = results["settings"]["natural_exponential"], results["lr"]
    for t in chosen_steps(results):  # learning_rate * exp(-decay_rate * global_step / decay_steps)
        expected = lr * math.exp(-knobs["decay_rate"] * t / knobs["decay_steps"])
        assert lr_of(results, "natural exponential", t) == pytest.approx(expected, rel=SCHEDULER_ROUNDING), t


def test_warmup_rises_linearly_then_decays(results):
    knobs, lr = results["settings"]["warmup"], results["lr"]
    warmup, start, final = knobs["warmup_steps"], knobs["start_factor"], knobs["final_factor"]
    for t in chosen_steps(results):
        if t < warmup:  # from lr·start to lr in a straight line
            expected = lr * (start + (1 - start) * t / warmup)
        else:  # then lr·final^((t − W)/(T − W)): lr·final at the end of the run
            expected = lr * final ** ((t - warmup) / (STEPS - warmup))
        assert lr_of(results, "warm-up + exponential", t) == pytest.approx(expected, rel=SCHEDULER_ROUNDING), t


def test_piecewise_linear_interpolates_its_points_from_zero(results):
    points = {0: 0.0, **results["settings"]["piecewise"]}  # Tiger's original starts from (0, 0)
    for t in chosen_steps(results):
        expected = results["lr"] * numpy.interp(t, list(points), list(points.values()))
        assert lr_of(results, "piecewise linear", t) == pytest.approx(expected, rel=1e-12, abs=1e-15), t


def seeds_plateau_rule(losses, lr, factor, patience, min_delta):
    """Keras's ReduceLROnPlateau, as the seed uses it: the lr after each epoch's loss."""
    best, wait, lrs = math.inf, 0, []
    for loss in losses:
        if loss < best - min_delta:
            best, wait = loss, 0
        else:
            wait += 1
            if wait >= patience:
                lr, wait = lr * factor, 0
        lrs.append(lr)
    return lrs


def test_plateau_follows_the_seeds_rule_with_patience_one_more(results):
    knobs, run = results["settings"]["plateau"], results["runs"]["plateau"]
    epoch, reductions = lr_schedules.EPOCH, 0
    for replicate in range(REPLICATES):
        losses = run["validation"][:, replicate].tolist()
        # torch reduces when num_bad_epochs > patience, Keras when wait >= patience.
        expected = seeds_plateau_rule(losses, results["lr"], knobs["factor"], knobs["patience"] + 1,
                                      knobs["threshold"])
        for epoch_index, lr in enumerate(expected):
            first_step = (epoch_index + 1) * epoch  # the lr from the step after the epoch's loss
            if first_step < STEPS:
                assert run["lr"][first_step, replicate].item() == pytest.approx(lr, rel=SCHEDULER_ROUNDING)
        reductions += sum(after < before for before, after in zip([results["lr"], *expected], expected))
    assert reductions >= REPLICATES  # the plateau rule acted: the comparison is not of constants


def test_every_decay_beats_a_constant_large_lr_on_every_replicate(results):
    runs = results["runs"]
    best_constant = runs["constant"]["final"].min().item()
    # The margin is the replicates' whole spread: each decay's worst replicate must beat the constant
    # lr's best one (in the script's run the decays end 30 to 120 times lower on average).
    for name in DECAYS:
        worst = runs[name]["final"].max().item()
        assert worst < best_constant, f"{name}: worst replicate {worst:.4g} >= best constant {best_constant:.4g}"


def test_a_small_constant_lr_is_no_substitute(results):
    # η0/100 has a low floor but cannot cover ‖w*‖ ≈ √20 in the run: its best replicate is worse
    # than the constant large lr's worst one.
    runs = results["runs"]
    assert runs["constant lr/100"]["final"].min() > runs["constant"]["final"].max()
