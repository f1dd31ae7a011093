"""Six rules × state precision on the tiny character GPT (scripts/reproductions/state_precision.py)."""
import pytest

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from scripts.reproductions import state_precision  # noqa: E402
from scripts.reproductions.state_precision import LOWER_PRECISIONS, Precision  # noqa: E402
from tests.conftest import run_reproduction  # noqa: E402

STEPS = state_precision.STEPS  # the script's own run length, so that the claim is tested where the figure shows it
# The rules of the claim, each at the lr its selection chooses (tiny_transformer's): the selection
# itself is tested apart, and tiny_transformer's sweep by its own test.
LEARNING_RATES = {"AdamW": (1e-3,), "Lion": (1e-3,), "Tiger": (1e-2,)}
# No optimizer takes it, whatever precisions land later: the path of a refused precision.
REFUSED = Precision("int2", "int2", False)
PARAMS = 108_288  # tiny_transformer's GPT (its figure and its test)
TENSORS = 28  # its param tensors, the tied head counted once
STATES = {"AdamW": 2, "Lion": 1, "Tiger": 1}  # element-wise states per param
SCALAR_STATES = {"AdamW": 1, "Lion": 0, "Tiger": 2}  # fp32 scalars per tensor: AdamW's step; Tiger's step, nan_skips


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # The precisions the claims below are about (int4's runs, a minute more here, are the figure's only)
    tested = tuple(p for p in LOWER_PRECISIONS if p.label in ("bf16", "int8"))
    return run_reproduction(state_precision, tmp_path_factory, learning_rates=LEARNING_RATES,
                            precisions=(*tested, REFUSED))


# The claim as measured (2026-11-30, after the quantizer multiplies by one factor per block instead
# of dividing per element): AdamW −0.23 %, Lion −0.53 %, Tiger +1.85 %. Tiger's loss moves by 1-2 %
# under any change of rounding here (bf16 state −0.39 %, bf16 with stochastic rounding +0.89 %; its
# int8 run was +0.95 % with the division, whose codes differ by a rounding on a few elements), so its
# bound is above that spread: the same code measured +1.85 % on 2026-11-30 and +2.00 % on 2026-12-06
# in a new environment (torch 2.13.0, triton 3.9.0, numpy 2.4.6), so 2.5 %, still below int4's +3.79 %.
WITHIN = {"AdamW": 0.01, "Lion": 0.01, "Tiger": 0.025}


def test_int8_state_ends_within_one_percent_of_fp32_for_adamw_and_lion_two_and_a_half_for_tiger(results):
    for name in LEARNING_RATES:
        fp32, int8 = (results["runs"][name][label]["validation_loss"] for label in ("fp32", "int8"))
        assert abs(int8 / fp32 - 1) < WITHIN[name], f"{name}: int8 {int8:.4f} against fp32 {fp32:.4f}"
        assert results["runs"][name]["int8"]["relative_to_fp32"] == pytest.approx(int8 / fp32 - 1)


def test_measured_state_bytes_equal_the_model_in_every_run(results):
    for name, by_precision in results["runs"].items():
        for label, run in by_precision.items():
            # Integer bytes: the registry's model must be exact, codes and scales counted.
            assert run["measured_state_bytes"] == run["analytic_state_bytes"], (name, label)
            assert run["measured_bytes_per_param"] == run["measured_state_bytes"] / PARAMS


def test_state_bytes_per_param_are_the_precisions_element_sizes(results):
    # Per element and state: fp32 4 bytes, bf16 2, int8 a byte of code and a 4-byte scale per 256.
    # Beyond that the fp32 scalars, and the scales of each tensor's last, partial block: at most
    # (4·3 + 4·2·28) / 108,288 < 0.003 byte per param.
    element_bytes = {"fp32": 4, "bf16": 2, "int8": 1 + 4 / 256}
    for name in LEARNING_RATES:
        for label, size in element_bytes.items():
            run = results["runs"][name][label]
            expected = STATES[name] * size + SCALAR_STATES[name] * 4 * TENSORS / PARAMS
            assert run["measured_bytes_per_param"] == pytest.approx(expected, abs=0.003), (name, label)


def test_every_run_starts_from_the_same_weights(results):
    fingerprints = {run["initial_weights"] for by_precision in results["runs"].values()
                    for run in by_precision.values()}
    assert fingerprints == {results["initial_weights"]}


def test_a_refused_precision_is_listed_with_the_optimizers_reason(results):
    for name in LEARNING_RATES:
        assert f"{name}: state_dtype='int2' must be None" in results["not_run"]["int2"][name]
    for label, reasons in results["not_run"].items():
        assert not any(label in results["runs"][name] for name in reasons), label
    assert "int2 not run (AdamW, Lion, Tiger): state_dtype='int2' must be None" in state_precision.table(results)


def test_writes_its_figure_and_numbers(results):
    assert (results["out"] / "state_precision.png").stat().st_size > 0
    runs = sum(len(by_precision) for by_precision in results["runs"].values())
    refused = sum(len(reasons) for reasons in results["not_run"].values())
    assert runs + refused == len(LEARNING_RATES) * 4  # fp32, bf16, int8, int2
    # a header, one row per run and one per refused (rule, precision); no sweep rows: one lr per rule
    csv = (results["out"] / "state_precision.csv").read_text()
    assert csv.count("\n") == 1 + runs + refused
    assert csv.count(",not run,") == refused


def test_adagrad_and_rmsprop_grids_are_centred_on_their_choice(tmp_path):
    # The docstring's claim: the selection (120 steps at fp32) picks the middle of each grid.
    numbers = state_precision.run(out=tmp_path, steps=1, precisions=(),
                                  learning_rates={name: state_precision.CONTENDERS[name].learning_rates
                                                  for name in ("Adagrad", "RMSprop")})
    assert numbers["learning_rates"] == {"Adagrad": 3e-3, "RMSprop": 3e-4}
    for name, sweep in numbers["sweeps"].items():
        losses = [run["final_train_loss"] for run in sorted(sweep, key=lambda run: run["lr"])]
        assert losses[1] < min(losses[0], losses[2]), name


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match="Adam'.*Adagrad"):
        state_precision.run(steps=1, learning_rates={"Adam": (1e-3,)})
