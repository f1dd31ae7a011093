"""Step overhead of the classes outside the registry (fo.Muon, fo.Adafactor, fo.LBFGS) against their torch
twins: the host time of one step, launches made no-ops (scripts/step_overhead.py's ``noop_launches``), on the
same params in the same run.

Without a GPU only (as scripts/step_overhead.py's CPU profile): Triton runs under its interpreter, every
launch returns at once, counted, and all the Python around it (checks, state, stacks, pointer tables)
runs. Ours run impl="triton" with torch's defaults; the twins are torch.optim.Muon,
torch.optim.Adafactor with foreach=False and with foreach=True, and torch.optim.LBFGS. Each implementation
steps its own copy of the same params with the same gradients. Two param sets, all matrices (Muon takes
nothing else):

- "148 × (4, 4)": scripts/step_overhead.py's set (GPT-2 small's tensor count, 16 elements each);
- "GPT-2 small's 50 matrices / 48": GPT-2 small's 2-D params (wte, wpe, and per block c_attn, attn.c_proj,
  c_fc, mlp.c_proj) in its 6 shapes with each side divided by 48 (768 → 16), so that torch's own steps,
  which compute for real on the CPU, stay mostly host time too.

L-BFGS: ``step(closure)`` with a closure that returns a fixed loss and leaves the gradients as they are,
and tolerance_grad = tolerance_change = -1 set on both groups after construction (the classes refuse
negative ones): with launches made no-ops our dot products read 0 and our vectors hold whatever their
memory held, so no value may decide the control flow. Then both run exactly max_iter = 20 iterations
(20 closure calls) per step and, the gradient never changing (y = 0, so ⟨y, s⟩ ≤ 1e-10), neither keeps
any history: the two-loop recursion over a history is not measured.

Every optimizer is warmed up with 2 steps; then each round times one step of every implementation, in a
shuffled order, the garbage collector off around each timed call; a row gives the median over the
rounds and its ratio to each twin's median on the same set. The machine is shared: timings are noisy.

Run: `python -m scripts.step_overhead_classes` (--help for the options); writes step_overhead_classes.csv
and .md under runs/<machine>/ (git ignores it), or under --out (reports/<machine> to keep them).
"""
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton, as scripts/step_overhead.py

import argparse  # noqa: E402
import gc  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import numpy  # noqa: E402

from fusedoptim import optim  # noqa: E402
from scripts.report import OUT_HELP, describe, machine, markdown_table, report_directory, write_csv, written  # noqa: E402
from scripts.step_overhead import noop_launches  # noqa: E402
from scripts.step_overhead_rows import WARM_UP_STEPS, failure  # noqa: E402

OURS = "ours"
# GPT-2 small's matrices (vocabulary 50257, context 1024, width 768, 12 blocks), each side divided by 48.
GPT2_MATRICES = [(1047, 16), (21, 16)] + [(16, 48), (16, 16), (16, 64), (64, 16)] * 12
PARAM_SETS = {"148 × (4, 4)": [(4, 4)] * 148, "GPT-2 small's 50 matrices / 48": GPT2_MATRICES}
CLOSURE_LOSS = torch.tensor(1.0)


def without_tolerances(optimizer):
    """L-BFGS with every stopping test but max_iter off (see the module's docstring)."""
    optimizer.param_groups[0].update(tolerance_grad=-1.0, tolerance_change=-1.0)
    return optimizer


# class -> (implementation, make): our implementation first, then its torch twins.
CONTENDERS = {
    "Muon": [(OURS, lambda ps: optim.Muon(ps, impl="triton")), ("torch", torch.optim.Muon)],
    "Adafactor": [(OURS, lambda ps: optim.Adafactor(ps, impl="triton")),
                  ("torch foreach=False", lambda ps: torch.optim.Adafactor(ps, foreach=False)),
                  ("torch foreach=True", lambda ps: torch.optim.Adafactor(ps, foreach=True))],
    "LBFGS": [(OURS, lambda ps: without_tolerances(optim.LBFGS(ps, impl="triton"))),
              ("torch", lambda ps: without_tolerances(torch.optim.LBFGS(ps)))],
}


def params_of(shapes, seed):
    """The same values for every implementation (one seed per set): params and their gradients."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator) for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    return params


def step_of(name, optimizer):
    if name == "LBFGS":
        return lambda: optimizer.step(lambda: CLOSURE_LOSS)
    return optimizer.step


def measure(name, set_name, shapes, rounds, counter, seed=0) -> list:
    entries = []
    for implementation, make in CONTENDERS[name]:
        entry = dict(optimizer_class=name, implementation=implementation, params=set_name, tensors=len(shapes),
                     rounds=rounds, status="measured", times=[], launches=[])
        try:
            step = step_of(name, make(params_of(shapes, seed)))
            for _ in range(WARM_UP_STEPS):
                step()
            entry["step"] = step
        except Exception as error:
            entry["status"] = failure(error)
        entries.append(entry)
    order = random.Random(f"{seed}-{name}-{set_name}")
    for _ in range(rounds):
        running = [entry for entry in entries if entry["status"] == "measured"]
        order.shuffle(running)
        for entry in running:
            launches, collecting = counter.count, gc.isenabled()
            gc.disable()
            try:
                start = time.perf_counter()
                entry["step"]()
                entry["times"].append(time.perf_counter() - start)
            except Exception as error:
                entry["status"] = failure(error)
            finally:
                if collecting:
                    gc.enable()
            entry["launches"].append(counter.count - launches)
    return [row_of(entry) for entry in entries]


def row_of(entry) -> dict:
    times, launches = entry.pop("times"), entry.pop("launches")
    entry.pop("step", None)
    if entry["status"] == "measured":
        median, low, high = numpy.quantile(numpy.array(times) * 1e3, [0.5, 0.2, 0.8])
        entry.update(median_ms=float(median), p20_ms=float(low), p80_ms=float(high),
                     launches_per_step=max(launches) if entry["implementation"] == OURS else "")
    return entry


def add_ratios(rows) -> list:
    """Each of ours: its median over each twin's median on the same set (ratio_to_<twin>)."""
    for row in rows:
        if row["implementation"] != OURS or row["status"] != "measured":
            continue
        for twin in rows:
            if (twin["optimizer_class"], twin["params"]) == (row["optimizer_class"], row["params"]) \
                    and twin["implementation"] != OURS and twin["status"] == "measured":
                row[f"ratio_to_{twin['implementation']}"] = row["median_ms"] / twin["median_ms"]
    return rows


def run(classes=tuple(CONTENDERS), sets=None, rounds=10, out=None, echo=True) -> list:
    """Rows for every class × param set (``sets``: name -> shapes, default PARAM_SETS) × implementation, written
    as CSV and markdown under ``out`` (default runs/<machine>/), the table printed unless ``echo`` is False."""
    if torch.cuda.is_available():
        raise RuntimeError("the CPU profile (launches made no-ops under the interpreter); there is no GPU version")
    facts = machine(torch.device("cpu"))
    started = time.perf_counter()
    rows = []
    with noop_launches() as counter:
        for name in classes:
            for set_name, shapes in (PARAM_SETS if sets is None else sets).items():
                rows += measure(name, set_name, shapes, rounds, counter)
    add_ratios(rows)
    seconds = time.perf_counter() - started
    directory = report_directory(facts, out)
    write_csv(directory / "step_overhead_classes.csv", facts, rows)
    (directory / "step_overhead_classes.md").write_text(report(facts, rows, rounds, seconds))
    if echo:
        print(f"Step overhead of Muon, Adafactor, LBFGS on {describe(facts)}; launches made no-ops; {rounds} rounds; "
              f"{seconds:.0f} s (a shared machine: timings are noisy)")
        print(markdown_table(rows, columns()))
        print(written(directory, ["step_overhead_classes.csv", "step_overhead_classes.md"]))
    return rows


def columns() -> dict:
    def cell(key, spec):
        return lambda r: format(r[key], spec) if isinstance(r.get(key), float) else r.get(key, "")
    ratios = lambda r: ", ".join(f"{key[9:]}: {value:.2f}" for key, value in r.items() if key.startswith("ratio_to_"))
    return {"class": lambda r: r["optimizer_class"], "implementation": lambda r: r["implementation"],
            "params": lambda r: r["params"], "tensors": lambda r: r["tensors"],
            "median ms": lambda r: cell("median_ms", ".3f")(r) if r["status"] == "measured" else r["status"],
            "p20–p80 ms": lambda r: f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f}" if "p20_ms" in r else "",
            "ours / twin": ratios, "launches": lambda r: r.get("launches_per_step", "")}


def report(facts, rows, rounds, seconds) -> str:
    doc = __doc__.split("\n\nRun:")[0]
    return "\n".join([
        "# Step overhead: Muon, Adafactor and LBFGS against torch's twins\n",
        f"Measured on {describe(facts)}; the run took {seconds:.0f} s. The machine is shared with other "
        "sessions: timings are noisy, and only ratios measured in the same run mean anything.\n",
        "## What was measured\n", doc, "",
        f"Each figure: the median of {rounds} rounds. \"ours / twin\": our median over that twin's. "
        "\"launches\": Triton launches per step of ours (made no-ops here; on a GPU each also costs Triton's "
        "launch path). No goal is set for these ratios (issue 26, item 5, asks for them measured).\n",
        "## Results\n", markdown_table(rows, columns()), ""])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.step_overhead_classes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds (default: 10)")
    parser.add_argument("--out", help=OUT_HELP)
    args = parser.parse_args(argv)
    run(tuple(args.classes), rounds=args.rounds, out=args.out)


if __name__ == "__main__":
    main()
