"""Issue 27, item 2: the race (scripts/reproductions/race.py) on a tiny budget: its table, its refusals,
its seeds, its int8 runs, its fused-against-reference check, its claims' verdicts and its narrowing.
The race's numbers at full size are the lead's run (docs/reproductions.md); here only its machinery."""
import math

import pytest
import torch

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from scripts.race import claims, entries, running, tasks  # noqa: E402
from scripts.reproductions import __main__ as reproductions, race  # noqa: E402

RULES = ["AdamW", "Lion", "SparseAdam"]  # two that run, one whose row (only_sparse_gradients) excludes it
STEPS = 10  # enough for a validation curve of 10 points; the numbers are not the point here


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("race")
    return {**race.run(out=out, rules=RULES, tasks=["mlp"], steps=STEPS, lr_factors=(1.0,), workers=1,
                       check_steps=2), "out": out}


def summary(results, rule, precision="fp32", task="mlp"):
    return next(row for row in results["summaries"]
                if (row["rule"], row["task"], row["precision"]) == (rule, task, precision))


def test_writes_the_table_with_its_columns(results):
    header = (results["out"] / "race.csv").read_text().splitlines()[0].split(",")
    for column in ("kind", "rule", "task", "precision", "lr", "lr_factor", "loss", "spread", "seeds",
                   "steps_to_target", "reason"):
        assert column in header, column
    table = (results["out"] / "race.md").read_text()
    assert table.startswith("| task | rule | state | lr | × default | validation loss | ± spread | seeds | "
                            "steps to target | not run because |")
    assert (results["out"] / "race.png").stat().st_size > 0
    assert math.isfinite(summary(results, "AdamW")["loss"])


def test_narrows_to_the_rules_and_tasks_asked(results):
    assert {row["rule"] for row in results["summaries"]} == set(RULES)
    # the large-batch variant of the MLP runs for LAMB's claim's entries only (here AdamW)
    assert {row["task"] for row in results["summaries"]} == {"mlp", "mlp ×8 batch"}
    assert {row["rule"] for row in results["summaries"] if row["task"] == "mlp ×8 batch"} == {"AdamW"}
    with pytest.raises(ValueError, match="--rules: no entry named Nonesuch"):
        race.run(rules=["Nonesuch"])
    with pytest.raises(ValueError, match="--tasks: no task named mnist"):
        race.run(tasks=["mnist"])


def test_the_command_line_passes_rules_and_tasks(monkeypatch, tmp_path):
    asked = {}
    monkeypatch.setattr(race, "run", lambda out, **options: asked.update(options, out=out))
    reproductions.main(["race", "--rules", "AdamW,Lion", "--tasks", "mlp", "--out", str(tmp_path)])
    assert asked == dict(rules=["AdamW", "Lion"], tasks=["mlp"], out=str(tmp_path))
    with pytest.raises(SystemExit):  # an option no reproduction named takes
        reproductions.main(["hypergradient", "--rules", "AdamW"])


def test_a_row_its_capabilities_exclude_is_reported_with_why(results):
    row = summary(results, "SparseAdam")
    assert "only_sparse_gradients" in row["reason"] and not math.isfinite(row["loss"])
    assert "only_sparse_gradients" in (results["out"] / "race.md").read_text()
    assert not any(run["entry"] == "SparseAdam" for run in results["runs"])


def test_the_seeds_start_from_different_weights(results):
    fp32 = [run for run in results["runs"] if run["task"] == "mlp" and run["precision"] == "fp32"]
    by_seed = {seed: {run["initial_weights"] for run in fp32 if run["seed"] == seed} for seed in running.SEEDS}
    # within a seed every rule starts from the same weights; the two seeds from different ones
    assert all(len(fingerprints) == 1 for fingerprints in by_seed.values())
    assert by_seed[0] != by_seed[1]
    assert len(set(summary(results, "AdamW")["seeds"].split())) == 2


def test_int8_runs_keep_int8_state(results):
    for rule in ("AdamW", "Lion"):
        runs = {run["precision"]: run for run in results["runs"]
                if run["entry"] == rule and run["task"] == "mlp" and run["seed"] == 0}
        # codes of one byte and a scale per 256 elements against fp32's four bytes: under a third
        assert runs["int8"]["state_bytes"] < runs["fp32"]["state_bytes"] / 3, (rule, runs)
        assert summary(results, rule, "int8")["lr"] == summary(results, rule)["lr"]


def test_the_validation_data_is_held_out():
    for name in ("mlp", "conv"):
        data = tasks.data_of(tasks.TASKS[name].data)
        train = {tuple(row.flatten().tolist()) for row in data.train_inputs}
        assert not any(tuple(row.flatten().tolist()) in train for row in data.validation_inputs), name
    gpt = tasks.data_of(tasks.TASKS["gpt"].data)
    assert not torch.equal(gpt.train_inputs[:len(gpt.validation_inputs)], gpt.validation_inputs)


def test_the_fused_check_passes_and_catches_a_difference(results):
    if not results["checks"]:
        pytest.skip("the kernels cannot run here: no GPU and no TRITON_INTERPRET=1")
    assert [check["entry"] for check in results["checks"]] == ["AdamW", "Lion"]
    assert all(check["equal"] for check in results["checks"]), results["checks"]

    class Nudge:  # a planted fused bug: every param moved by 1e-3 after each step
        def __init__(self, model):
            self.params, self.state = list(model.parameters()), {}

        def step(self):
            with torch.no_grad():
                for param in self.params:
                    param.add_(1e-3)

        def zero_grad(self, set_to_none=True):
            pass

    def planted(entry, model, lr, impl):
        return entries.build(entry, model, lr, impl=impl) + ([Nudge(model)] if impl == "triton" else [])

    selected = entries.select(entries.all_entries(), ["AdamW"])
    checks = running.compare_impls(selected, tasks.TASKS["mlp"], steps=2, make=planted)
    assert not checks[0]["equal"] and checks[0]["difference"] > checks[0]["bound"], checks


def fp32(loss, spread, lr):
    return dict(loss=loss, spread=spread, lr=lr)


def test_a_claims_verdict_follows_its_numbers():
    registry = {"AdamW", "Lion"}

    def verdict(summaries, text="Lion"):
        return next(row for row in claims.judge(summaries, registry, ["mlp"])
                    if row["claim"].startswith(text) and row["task"] == "mlp")["verdict"]

    adamw = {("AdamW", "mlp", "fp32"): fp32(0.50, 0.01, 1e-3)}
    assert verdict({**adamw, ("Lion", "mlp", "fp32"): fp32(0.49, 0.01, 1e-4)}) == "held"
    assert verdict({**adamw, ("Lion", "mlp", "fp32"): fp32(0.60, 0.01, 1e-4)}) == "not held"  # worse loss
    assert verdict({**adamw, ("Lion", "mlp", "fp32"): fp32(0.49, 0.01, 1e-3)}) == "not held"  # the same lr
    assert verdict({**adamw, ("Lion", "mlp", "fp32"): fp32(math.inf, math.inf, 1e-4)}).startswith("not testable")
    assert verdict(adamw, "AdEMAMix") == "not testable: AdEMAMix not in the registry"
    int8 = {**adamw, ("AdamW", "mlp", "int8"): fp32(0.505, 0.01, 1e-3)}
    assert verdict(int8, "int8") == "held"
    int8[("AdamW", "mlp", "int8")] = fp32(0.55, 0.01, 1e-3)
    assert verdict(int8, "int8") == "not held"


def test_the_race_decides_its_claims(results):
    verdicts = {(row["claim"], row["task"]): row["verdict"] for row in results["claims"]}
    assert verdicts[(claims.INT8_CLAIM, "mlp")] in ("held", "not held")
    assert ",claim," in (results["out"] / "race.csv").read_text()


def test_a_switchable_optimizer_validates_in_eval_mode_and_a_failing_one_is_reported():
    schedulefree = pytest.importorskip("schedulefree")
    modes = []

    class Recording(schedulefree.SGDScheduleFree):  # the authors' schedule-free SGD, its switches recorded
        def train(self):
            modes.append("train")
            super().train()

        def eval(self):
            modes.append("eval")
            super().eval()

    def row(optimizer):
        return type("Row", (), dict(name="Recording", defaults={"lr": 0.1}, optimizer=staticmethod(optimizer)))()

    task = tasks.TASKS["mlp"]._replace(steps=4)
    switching = entries.Entry("Recording", row(lambda params, lr, impl: Recording(params, lr=lr)))
    result = running.train(running.Job("Recording", task, 0.1, 0, 4, 2), {"Recording": switching})
    assert math.isfinite(result["final"]) and not result["reason"]
    assert modes == ["train", "eval", "train", "eval", "train"]  # eval around each of the 2 validations

    def breaks(params, lr, impl):
        optimizer = torch.optim.SGD(params, lr=lr)
        optimizer.step = lambda: (_ for _ in ()).throw(RuntimeError("planted"))
        return optimizer

    failing = entries.Entry("Failing", row(breaks))
    result = running.train(running.Job("Failing", task, 0.1, 0, 4, 2), {"Failing": failing})
    assert result["reason"] == "failed: RuntimeError: planted" and result["final"] == math.inf


def test_the_documented_verdicts_are_the_committed_full_runs():
    """docs/reproductions.md states each claim's verdict per task as the committed full race decided it
    (reports/reproductions/race.csv, written by `./dev reproduce race --out reports/reproductions`): a
    rerun that changes a verdict, or a verdict edited by hand, makes the two disagree here."""
    import csv
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    with open(root / "reports" / "reproductions" / "race.csv", newline="") as file:
        verdicts = [row for row in csv.DictReader(file) if row["kind"] == "claim"]
    assert verdicts, "the committed race has no claims"
    document = (root / "docs" / "reproductions.md").read_text(encoding="utf-8")
    for row in verdicts:
        cells = [row["claim"], row["task"], row["verdict"], row["numbers"]]
        line = "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
        assert line in document, f"docs/reproductions.md lacks the committed race's verdict: {line}"
