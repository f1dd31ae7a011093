"""The profiling suite: memory figures against the analytic model, the bandwidth report's figures, and
what a run leaves behind: its files where git does not track them, its figures saying what they lack."""
import csv
import importlib
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the profiles draw with it")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from fusedoptim.optim.registry import RULES, SHAPED_RULES  # noqa: E402
from scripts import bandwidth, memory, report  # noqa: E402
from scripts.gpt import GPT2_SMALL, GPTConfig, parameter_shapes  # noqa: E402
from tests.conftest import DEVICE  # noqa: E402

# Width 128: every tensor at least 512 bytes in fp32, the CUDA caching allocator's rounding unit, so
# a GPU run's peaks are the tensors' bytes as on the CPU.
TINY_GPT = GPTConfig(vocab=256, context=16, width=128, blocks=1, heads=2)
TOKENS = 16


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved while the test runs (and still written to its file)."""
    saved, savefig = [], Figure.savefig

    def recording(figure, *args, **kwargs):
        saved.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return saved


def texts(artist) -> str:
    """Every text a reader sees in a figure or in one of its axes (titles, labels, legends, notes)."""
    return "\n".join(text.get_text() for text in artist.findobj(Text) if text.get_visible() and text.get_text())


def test_gpt2_small_shapes_are_gpt2_small():
    """The published size of GPT-2 small (124M, with the head tied to the token embedding)."""
    shapes = parameter_shapes(GPT2_SMALL)
    assert len(shapes) == 148
    assert sum(math.prod(s) for s in shapes) == 124_439_808


def test_measured_state_bytes_equal_the_registry_model_for_every_rule_and_policy():
    rows = memory.state_rows(list(memory.POLICIES), DEVICE, TINY_GPT)
    # every element-wise rule, and every rule of another shape whose state one step() fills (not L-BFGS's history)
    shaped = {name for name, rule in SHAPED_RULES.items() if not rule.optimizer.NEEDS_CLOSURE}
    assert {r["rule"] for r in rows} == set(RULES) | shaped
    for row in rows:
        assert row["measured_state_bytes"] == row["analytic_state_bytes"], row
    adam = {r["policy"]: r["analytic_state_bytes_per_param"] for r in rows if r["rule"] == "Adam"}
    assert adam["fp32"] == pytest.approx(8, abs=0.01) and adam["pure bf16, stochastic rounding"] == pytest.approx(4, abs=0.01)


@pytest.fixture(scope="module")
def accumulation_peaks():
    """k = 4 in fp32: Adam, Lion, Tiger without and with gradient release, through the fused kernels."""
    rows = memory.peak_rows(["Adam", "Lion", "Tiger"], ["fp32"], [4], "triton", DEVICE, TINY_GPT, TOKENS)
    return {memory.label(r): r for r in rows}


def test_training_peaks_agree_with_the_analytic_model(accumulation_peaks):
    for name, row in accumulation_peaks.items():
        assert abs(row["difference"]) <= memory.AGREEMENT, (name, row)


def test_accumulation_headline(accumulation_peaks):
    """Adam holds params + grads + 2 states, Lion params + grads + 1, Tiger with release params + 1:
    the measured peaks differ by one state, then by the gradients (less the one in flight)."""
    adam, lion, tiger = (accumulation_peaks[name] for name in ("Adam", "Lion", "Tiger + release"))
    assert (adam["held"], lion["held"], tiger["held"]) == (
        "params + grads + 2 states", "params + grads + 1 state", "params + 1 state")
    one_state = lion["state_bytes"]
    assert adam["measured_peak_bytes"] - lion["measured_peak_bytes"] == pytest.approx(one_state, rel=0.03)
    grads = lion["params_bytes"]
    assert lion["measured_peak_bytes"] - tiger["measured_peak_bytes"] == pytest.approx(grads, rel=0.03)
    assert accumulation_peaks["Tiger"]["measured_peak_bytes"] > tiger["measured_peak_bytes"]


def test_pure_bf16_with_release_agrees_with_the_model():
    """Half the fp32 bytes; the stochastic-rounding kernel allocates nothing. On a CPU, Tiger's RMS
    (torch's norm with dtype=float32) first copies each bf16 matrix to fp32: with activations this
    small that copy tops the peak, by at most the largest matrix in fp32."""
    (row,) = memory.peak_rows(["Tiger"], ["pure bf16, stochastic rounding"], [2], "triton", DEVICE, TINY_GPT,
                              TOKENS)[1:]
    assert row["gradient_release"] and row["held"] == "params + 1 state"
    largest_in_fp32 = 4 * max(math.prod(shape) for shape in parameter_shapes(TINY_GPT))
    allowed = largest_in_fp32 if DEVICE.type == "cpu" else 0
    assert row["measured_peak_bytes"] <= row["analytic_peak_bytes"] * (1 + memory.AGREEMENT) + allowed, row
    assert row["measured_peak_bytes"] >= row["analytic_peak_bytes"] * (1 - memory.AGREEMENT), row


def test_int8_state_peaks_agree_with_the_model():
    """bf16 params with int8 states (and a 24-bit master, or stochastic rounding) peak at the model's
    params + grads + codes and scales + backward: the fused step and the making of the state allocate
    nothing beside them. Lion at k = 2 holds every gradient when its first step makes the state, where
    quantizing an fp32 copy of each param's initial value put the peak 60 % above the model."""
    int8 = [name for name, policy in memory.POLICIES.items() if policy.state_dtype == "int8"]
    rows = memory.peak_rows(["Lion"], int8, [2], "triton", DEVICE, TINY_GPT, TOKENS)
    assert [row["policy"] for row in rows] == int8 and len(int8) == 2
    for row in rows:
        assert row["held"] == "params + grads + 1 state", row
        assert abs(row["difference"]) <= memory.AGREEMENT, row


def test_persistent_memory_headline():
    """Issue 18's headline, measured: Tiger with gradient release, bf16 params, a 24-bit master and int8
    momentum keeps ≤ 4.05 bytes per param from step to step under any accumulation (≤ 3.05 with stochastic
    rounding instead of the residual); AdamW with int8 states and 24-bit masters ≤ 7.05 with its bf16
    gradients held until the step, ≤ 5.05 with gradient release. Measured = the registry's model."""
    rows = [*memory.peak_rows(["Tiger"], ["bf16 + 24-bit master, int8 state", "bf16, int8 state, stochastic rounding"],
                              [1, 4], "reference", DEVICE, TINY_GPT, TOKENS),
            *memory.peak_rows(["AdamW"], ["bf16 + 24-bit master, int8 state"], [1], "reference", DEVICE, TINY_GPT,
                              TOKENS)]
    goals = [r for r in rows if r["persistent_goal"] is not None]
    assert len(goals) == 6  # Tiger + release at k = 1 and 4 in both policies, AdamW with and without release
    for row in goals:
        assert row["measured_persistent_bytes_per_param"] == pytest.approx(row["analytic_persistent_bytes_per_param"],
                                                                           rel=1e-12), row
        assert row["measured_persistent_bytes_per_param"] <= row["persistent_goal"], row


def test_memory_report_is_written(tmp_path, saved_figures):
    # k = 1 and 2: Lion releases its gradients at k = 1 only, so one of its bars has no k = 2 twin
    memory.main(["--rules", "Lion", "--policies", "fp32", "--accumulation", "1", "2", "--impl", "reference",
                 "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "memory.csv")))
    assert {"machine", "torch", "triton", "date"} <= set(rows[0])
    assert "Lion" in (tmp_path / "memory.md").read_text()
    assert (tmp_path / "memory.png").stat().st_size > 10_000
    (figure,) = saved_figures
    if DEVICE.type == "cpu":  # the figure itself says what a CPU could not measure, and why
        assert "GPT-2 small's peaks on a GPU (torch.cuda.max_memory_allocated): not measured, needs a GPU" in \
            " ".join(texts(figure).split())


def test_rotating_buffer_sets_outsize_the_cache():
    rule = RULES["Adam"]
    for numel in (2**12, 2**20, 2**26):
        sets = bandwidth.buffer_sets(rule, [(numel,)], torch.float32, DEVICE)
        stored = numel * 16  # θ, g, m, v
        assert sets == bandwidth.MAX_SETS or sets * stored >= 4 * bandwidth.cache_bytes(DEVICE), (numel, sets)
        assert sets >= 2


def test_bandwidth_report_figures(tmp_path, saved_figures):
    """A short run: every figure is its own arithmetic (bytes from the registry, GB/s from the median),
    and what needs a GPU is said, not measured, on a CPU: in the report and in the figure."""
    bandwidth.main(["--rules", "Adam", "Lion", "--sizes", "12", "--gpt-width", "16", "--rep-ms", "5",
                    "--out", str(tmp_path)] + ([] if DEVICE.type == "cuda" else ["--dtypes", "fp32"]))
    rows = list(csv.DictReader(open(tmp_path / "bandwidth.csv")))
    measured = [r for r in rows if r["status"] == "measured"]
    assert {"machine", "torch", "triton", "date", "copy_gbps"} <= set(rows[0])
    implementations = {(r["rule"], r["implementation"]) for r in measured}
    assert {("Adam", "reference"), ("Adam", "torch foreach"), ("Lion", "reference")} <= implementations
    for r in measured:
        group = RULES[r["rule"]].defaults
        dtype = {v: k for k, v in bandwidth.DTYPE_NAMES.items()}[r["dtype"]]
        assert int(r["bytes_moved"]) == int(r["numel"]) * RULES[r["rule"]].bytes_per_param(group, dtype)
        assert float(r["gbps"]) == pytest.approx(int(r["bytes_moved"]) / float(r["median_ms"]) / 1e6, rel=1e-6)
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
    assert {r["size"] for r in measured} == {"2^12", "GPT list"}
    text = (tmp_path / "bandwidth.md").read_text()
    if DEVICE.type == "cpu":
        assert "triton: needs a GPU" in text and "not measured" in text
        assert ("Lion", "triton") not in implementations
    else:
        assert ("Lion", "triton") in implementations
    assert (tmp_path / "bandwidth-fp32.png").stat().st_size > 10_000
    # In the figure, every implementation is a line or a legend entry saying why it has none; a rule
    # another implementation could not run says so under its plot.
    (figure,) = saved_figures
    (legend,) = figure.legends
    entries = [" ".join(text.get_text().split()) for text in legend.get_texts()]
    for name in bandwidth.IMPLEMENTATIONS:  # its legend name: the name, or the name and whose it is "(ours …)"
        mine = [entry for entry in entries if entry.split(": ")[0] == name or entry.startswith(f"{name} (")]
        assert len(mine) == 1, (name, entries)
        drawn = any(r["implementation"] == name and r["size"] != "GPT list" for r in measured)
        assert drawn != (": not measured, " in mine[0]), (name, mine)
        if DEVICE.type == "cpu" and bandwidth.IMPLEMENTATIONS[name].needs_gpu:
            assert ": not measured, needs a GPU" in mine[0], mine
    lion = next(axis for axis in figure.axes if axis.get_title() == "Lion")
    assert "torch.optim has no Lion" in " ".join(texts(lion).split())


def test_a_run_writes_where_git_does_not_track_by_default():
    """A profile run leaves the checkout clean: by default it writes under a folder git ignores, and
    writing into the committed reports/ is a deliberate --out."""
    facts = report.machine(DEVICE)
    directory = report.report_directory(facts).resolve()
    root = Path(__file__).resolve().parent.parent
    assert directory.is_relative_to(root) and not directory.is_relative_to(report.REPORTS), directory
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in (directory, directory / "memory.csv", directory / "bandwidth-fp32.png"):
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--", str(path)])
        assert ignored.returncode == 0, f"git would track {path.relative_to(root)}: a run would dirty the checkout"


@pytest.mark.parametrize("module", ["memory", "bandwidth", "communication", "step_overhead"])
def test_each_profile_says_where_it_writes_and_how_to_keep_its_results(module, capsys):
    with pytest.raises(SystemExit):
        importlib.import_module(f"scripts.{module}").main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "runs/<machine>/" in text and "--out reports/<machine>" in text, f"python -m scripts.{module} --help"


def test_the_memory_profile_names_every_policy_it_runs(capsys):
    """Its --help is made from POLICIES, so that the text cannot fall behind the code."""
    with pytest.raises(SystemExit):
        memory.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: all {len(memory.POLICIES)}" in text, text
    for name in memory.POLICIES:
        assert f'"{name}"' in text, name
