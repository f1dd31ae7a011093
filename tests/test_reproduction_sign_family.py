"""The sign family's equivalences and AdamW against Adam + L2 (scripts/reproductions/sign_family.py)."""
import pytest
import torch

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from scripts.reproductions import common, sign_family  # noqa: E402
from tests.conftest import run_reproduction  # noqa: E402

STEPS = 100  # enough for every momentum to change sign many times; the script runs 200
LR, WEIGHT_DECAY, ADAM_LR, ADAM_STEPS = 1e-2, 0.1, 1e-3, 1000  # the AdamW numbers: η = 1e-3, λ = 0.1


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_reproduction(sign_family, tmp_path_factory, steps=STEPS, adam_steps=ADAM_STEPS, lr=LR,
                            weight_decay=WEIGHT_DECAY, adam_lr=ADAM_LR)


def test_writes_its_figure_and_numbers(results):
    assert (results["out"] / "sign_family.png").stat().st_size > 0
    assert (results["out"] / "sign_family.csv").read_text().count("\n") == len(results["pairs"]) + 5 + 1


def test_equal_rules_are_bitwise_equal(results):
    # Same fp32 operations in the same order on the same gradients: not one bit may differ.
    bitwise = {name: row for name, row in results["pairs"].items() if row["expected"] == "bitwise"}
    assert len(bitwise) == 4
    for name, row in bitwise.items():
        assert row["max_difference"] == 0.0, f"{name}: max |Δθ| = {row['max_difference']:.3g}"


def test_tiger_matrix_decay_is_lion_decoupled_decay_to_fp32_rounding(results):
    (name, row), = ((name, row) for name, row in results["pairs"].items() if row["expected"] == "fp32")
    # Each side rounds θ's update at most once per operation, about one ulp of |θ| per step each:
    # the gap may grow by 2 ulps of the largest |θ| per step, no more (a sign flip would add 2η).
    bound = STEPS * 2 * torch.finfo(torch.float32).eps * row["max_theta"]
    assert row["max_difference"] <= bound, f"{name}: {row['max_difference']:.3g} > {bound:.3g}"


def test_the_control_pair_differs(results):
    # Lion with β1 ≠ β2 is not Signum: once a sign disagrees, θ moves 2η apart. This shows the
    # comparison can tell unequal rules apart.
    (row,) = (row for row in results["pairs"].values() if row["expected"] == "differs")
    assert row["max_difference"] > LR


def test_adamw_decays_by_the_closed_form(results):
    assert results["closed_form"] == pytest.approx(0.904833, abs=5e-7)  # (1 − 1e-4)^1000, the 6 digits
    # θ·fp32(1 − ηλ) rounds θ once per step, at most half an ulp (2^-24 relative): 1000 steps, 6e-5.
    assert results["adamw"] == pytest.approx(results["fp32_factor_closed_form"], rel=ADAM_STEPS * 2**-24)
    # fp32(1 − ηλ) itself is off by up to 2^-25 relative, 3e-5 after 1000 powers, plus the above.
    assert results["adamw"] == pytest.approx(0.904833, rel=ADAM_STEPS * (2**-25 + 2**-24))


def test_adam_l2_falls_about_lr_per_step_whatever_the_decay(results):
    # The issue says "about 0.258": three digits, so within 1e-3.
    assert results["adam_l2"] == pytest.approx(0.258, abs=1e-3)
    assert results["adam_l2"] < results["adamw"] - 0.5  # far below the decay AdamW applies
    # λ cancels in m̂/√v̂; only eps = 1e-8 against √v̂ ≥ λ/100·θ ≈ 2.5e-4 remains (4e-5 of each step).
    assert results["adam_l2_weak"] == pytest.approx(results["adam_l2"], abs=1e-4)


def test_the_fused_kernels_agree_bitwise_too():
    # The interpreted kernel is slow (a tenth of a second per step): three steps, Tiger against Lion.
    pair = sign_family.pairs(LR, 0.9, WEIGHT_DECAY, impl="triton")["Tiger(bias, lr 2η) vs Lion(β1=β2)"]
    with common.one_thread():
        left, right = sign_family.trajectory(pair.left, 3), sign_family.trajectory(pair.right, 3)
    assert torch.equal(left, right)
    assert not torch.equal(left[0], left[-1])  # the params moved
