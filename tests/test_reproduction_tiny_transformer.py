"""Tiger, Lion, AdamW and SGD on a tiny character-level GPT (scripts/reproductions/tiny_transformer.py)."""
import math

import pytest

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from scripts.reproductions import tiny_transformer  # noqa: E402
from tests.conftest import run_reproduction  # noqa: E402

STEPS = 120  # the script's own run length, so that the claim is tested where the figure shows it
# One lr per optimizer instead of the script's three: the one its sweep chooses at this length. The
# sweep itself is tested apart, on a few steps.
LEARNING_RATES = {"Tiger": (1e-2,), "Lion": (1e-3,), "AdamW": (1e-3,), "SGD": (0.1,)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_reproduction(tiny_transformer, tmp_path_factory, steps=STEPS, learning_rates=LEARNING_RATES)


def test_writes_its_figure_and_numbers(results):
    assert (results["out"] / "tiny_transformer.png").stat().st_size > 0
    # a header, one row per run, one per step of each chosen run's training loss
    rows = 1 + len(LEARNING_RATES) + STEPS * len(LEARNING_RATES)
    assert (results["out"] / "tiny_transformer.csv").read_text().count("\n") == rows


def test_every_optimizer_learns_more_than_the_character_frequencies(results):
    # The bar is computed, not chosen: predicting each character by its training frequency scores
    # the unigram loss on the validation text, 1.15 nats below the uniform ln V. A model below it
    # uses the context, and is then more than a nat below ln V.
    uniform, unigram = results["uniform_loss"], results["unigram_loss"]
    assert uniform == pytest.approx(math.log(96))  # the corpus's 96 distinct characters
    assert unigram < uniform - 1
    for name, run in results["chosen"].items():
        assert run["validation_loss"] < unigram, f"{name}: validation {run['validation_loss']:.3f} >= {unigram:.3f}"


def test_sign_rules_keep_one_state_per_param_and_adamw_two(results):
    chosen = results["chosen"]
    for name, run in chosen.items():
        # Integer bytes of fp32 tensors: the registry's model must be exact.
        assert run["measured_state_bytes"] == run["analytic_state_bytes"], name
        assert run["measured_states_per_param"] == run["analytic_states_per_param"], name
    assert [chosen[name]["measured_states_per_param"] for name in ("Tiger", "Lion", "SGD", "AdamW")] == [1, 1, 1, 2]
    # Beyond the element-wise states only fp32 scalars per tensor: Tiger's step and nan_skips, AdamW's step.
    tensors = 28  # the GPT's param tensors, the tied head counted once
    assert chosen["Tiger"]["measured_state_bytes"] == chosen["Lion"]["measured_state_bytes"] + 2 * 4 * tensors
    assert chosen["AdamW"]["measured_state_bytes"] == 2 * chosen["Lion"]["measured_state_bytes"] + 4 * tensors
    assert chosen["Lion"]["measured_state_bytes"] == chosen["Lion"]["param_bytes"]


def test_every_run_starts_from_the_same_weights(results):
    fingerprints = {run["initial_weights"] for runs in results["runs"].values() for run in runs}
    assert fingerprints == {results["initial_weights"]}


def test_the_sweep_never_chooses_a_diverging_lr(tmp_path):
    # SGD at lr 30 overflows within a few steps (its loss becomes inf or NaN): a sweep that compared
    # NaN naively could keep it.
    numbers = tiny_transformer.run(out=tmp_path, steps=10, learning_rates={"SGD": (30.0, 0.1)})
    diverged, chosen = sorted(numbers["runs"]["SGD"], key=lambda run: -run["lr"])
    assert not math.isfinite(diverged["final_train_loss"])
    assert numbers["chosen"]["SGD"] is chosen and chosen["lr"] == 0.1


def test_an_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="Adam'.*Tiger"):
        tiny_transformer.run(steps=1, learning_rates={"Adam": (1e-3,)})
