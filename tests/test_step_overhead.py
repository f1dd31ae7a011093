"""scripts/step_overhead.py, the host-time profile, at tiny settings: a row for every rule asked for in both
gradient modes, its ratio to torch fused AdamW its own arithmetic, the reports written and naming the
machine, and Triton's launches real again after the run (launches are no-ops only while it measures)."""
import csv

import pytest
import torch

from fusedoptim import optim
from tests.conftest import DEVICE

pytestmark = pytest.mark.skipif(DEVICE.type == "cuda", reason="the CPU profile; on a GPU the script times CUDA events")

RULES = ["AdamW", "EG", "Tiger", "SGDHD", "SGD (momentum)"]  # plain, non-negative, prepare + reduce, first-step state


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    from triton.runtime.interpreter import InterpretedFunction

    from scripts import step_overhead

    original = InterpretedFunction.__dict__["run"]
    out = tmp_path_factory.mktemp("step_overhead")
    rows = step_overhead.run(tensors=[8], rounds=3, rules=RULES, out=out, progress=False, echo=False)
    return dict(rows=rows, out=out, original=original, patched_after=InterpretedFunction.__dict__["run"])


def test_every_rule_has_a_measured_row_in_both_gradient_modes(profile):
    from scripts.step_overhead_rows import cases

    rows = profile["rows"]
    twins = {label for label in RULES if cases()[label].torch_twin is not None}
    assert twins == {"AdamW", "SGD (momentum)"}  # RULES has rules with a torch twin and rules without
    for mode in ("same", "fresh"):
        assert [r["rule"] for r in rows if r["implementation"] == "torch fused" and r["gradients"] == mode] == ["AdamW"]
        foreach = [r for r in rows if r["implementation"] == "torch foreach" and r["gradients"] == mode]
        assert sorted(r["rule"] for r in foreach) == sorted(twins)  # AdamW's once: the baseline is its twin
        assert all(r["status"] == "measured" for r in foreach), foreach
        ours = {r["rule"]: r for r in rows if r["implementation"] == "ours" and r["gradients"] == mode}
        assert sorted(ours) == sorted(RULES)
        for rule, row in ours.items():
            assert row["status"] == "measured", f"{rule} ({mode}): {row['status']}"
            assert row["tensors"] == 8 and row["rounds"] == 3
            assert row["median_ms"] > 0
            # every launch went through the no-op: the step made its launches, none of them ran
            assert row["launches_per_step"] >= 1, f"{rule} ({mode}) made no Triton launch"
            assert row["goal"] == ("met" if row["ratio_to_torch_fused"] <= 0.5 else "not met")


def test_each_ratio_is_the_median_over_torch_fused_of_the_same_tensors_and_mode(profile):
    rows = profile["rows"]
    for row in (r for r in rows if r["status"] == "measured"):
        fused = [r for r in rows if r["implementation"] == "torch fused" and r["tensors"] == row["tensors"]
                 and r["gradients"] == row["gradients"]]
        assert len(fused) == 1
        assert row["ratio_to_torch_fused"] == pytest.approx(row["median_ms"] / fused[0]["median_ms"], rel=1e-12)


def test_each_of_ours_with_a_twin_has_its_ratio_to_the_twins_foreach_step(profile):
    rows = profile["rows"]
    for row in (r for r in rows if r["implementation"] == "ours"):
        twin = [r for r in rows if r["implementation"] == "torch foreach" and r["rule"] == row["rule"]
                and r["tensors"] == row["tensors"] and r["gradients"] == row["gradients"]]
        if not twin:
            assert "ratio_to_twin_foreach" not in row, row
            continue
        assert len(twin) == 1
        assert row["ratio_to_twin_foreach"] == pytest.approx(row["median_ms"] / twin[0]["median_ms"], rel=1e-12)


def test_the_csv_and_the_markdown_are_written_and_name_the_machine(profile):
    csv_path, md_path = profile["out"] / "step_overhead.csv", profile["out"] / "step_overhead.md"
    assert csv_path.exists() and md_path.exists()
    with open(csv_path) as file:
        written = list(csv.DictReader(file))
    assert len(written) == len(profile["rows"])
    name = written[0]["machine"]
    assert name.startswith("CPU") and all(r["machine"] == name for r in written)
    text = md_path.read_text()
    assert name in text and "no-op" in text and "median of 3" in text and "0.5" in text
    assert "ratio to torch foreach, same rule" in text and "foreach implementation of the same rule" in text


def test_launches_run_again_after_the_profile(profile):
    assert profile["patched_after"] is profile["original"]
    params = [torch.randn(4, 4)]
    params[0].grad = torch.ones(4, 4)
    before = params[0].clone()
    optim.AdamW(params, impl="triton").step()
    assert not torch.equal(params[0], before), "after the profile a step must run its kernel again"
