"""scripts/step_overhead_classes.py at tiny settings: Muon, Adafactor and LBFGS each measured against their
torch twins on the same params, ours with its launches made no-ops, each ratio its own arithmetic, the
reports written and naming the machine."""
import csv

import pytest

from tests.conftest import DEVICE

pytestmark = pytest.mark.skipif(DEVICE.type == "cuda", reason="the CPU profile (launches made no-ops)")

TWINS = {"Muon": ["torch"], "Adafactor": ["torch foreach=False", "torch foreach=True"], "LBFGS": ["torch"]}


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    from scripts import step_overhead_classes

    out = tmp_path_factory.mktemp("step_overhead_classes")
    rows = step_overhead_classes.run(sets={"3 × (4, 4)": [(4, 4)] * 3, "2 shapes": [(4, 8), (8, 4)]}, rounds=2,
                                     out=out, echo=False)
    return dict(rows=rows, out=out)


def test_each_class_and_its_twins_have_a_measured_row_on_each_set(profile):
    rows = profile["rows"]
    for name, twins in TWINS.items():
        for params in ("3 × (4, 4)", "2 shapes"):
            found = {r["implementation"]: r for r in rows if r["optimizer_class"] == name and r["params"] == params}
            assert sorted(found) == sorted(["ours", *twins]), (name, params, sorted(found))
            for implementation, row in found.items():
                assert row["status"] == "measured", (name, params, implementation, row["status"])
                assert row["median_ms"] > 0 and row["rounds"] == 2
            ours = found["ours"]
            # every launch went through the no-op: the step made its launches, none of them ran
            assert ours["launches_per_step"] >= 1, (name, params)
            for twin in twins:
                assert ours[f"ratio_to_{twin}"] == pytest.approx(ours["median_ms"] / found[twin]["median_ms"],
                                                                 rel=1e-12)


def test_the_csv_and_the_markdown_are_written_and_name_the_machine(profile):
    csv_path, md_path = profile["out"] / "step_overhead_classes.csv", profile["out"] / "step_overhead_classes.md"
    with open(csv_path) as file:
        written = list(csv.DictReader(file))
    assert len(written) == len(profile["rows"])
    name = written[0]["machine"]
    assert name.startswith("CPU") and all(r["machine"] == name for r in written)
    text = md_path.read_text()
    assert name in text and "no-op" in text and "shared" in text and "median of 2 rounds" in text
