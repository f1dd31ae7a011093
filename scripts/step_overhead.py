"""Step overhead: the host time of one optimizer step (the Python around the kernels), against torch's AdamW.

On a GPU kernel launches are asynchronous, so a step costs max(host time, kernel time); for a model of
many small tensors the host part decides. This profile measures it.

Without a GPU (what runs on the CPU machines): Triton runs under its interpreter (TRITON_INTERPRET=1),
where every launch goes through ``triton.runtime.interpreter.InterpretedFunction.run``. For the whole
measurement that method is replaced by one that only counts the launch and returns, so every launch is
free while all the Python around it (checks, state, pointer tables, arguments, the custom op) still
runs; the original is put back afterwards. Every param is a 16-element fp32 tensor of shape (4, 4) (a
matrix, as Tiger sees a weight), so torch's own ``AdamW(fused=True)`` on the same tensors is almost all
host time too: a fair baseline, measured in the same process on the same shapes.

Each row is one update rule of ``optim.RULES`` (impl="triton", the rule's defaults; EG on non-negative
params), plus SGD with momentum 0.9, at 148 tensors (GPT-2 small's count) and 2,000 tensors, in two
gradient modes: "same" (the .grad tensors stay the same objects between steps) and "fresh" (before each
timed step every param gets a new grad tensor, as after zero_grad(set_to_none=True) and a backward; the
new tensors are made and assigned outside the timed region). Every optimizer is warmed up with 2 steps
(the first makes the state); then the implementations are timed one step each, round after round, in
a shuffled order each round, with the garbage collector disabled around each timed call. A row gives
the median over the rounds, its ratio to torch fused AdamW's median in the same (tensors, mode), and
whether it meets the goal: ratio <= 0.5. torch's foreach AdamW is measured beside it.

On a GPU (UNTESTED on the CPU machines, which have no GPU: written for torch 2.11 / triton 3.6 on an
H200): the wall time of one step, CUDA events around each step after a device sync (median over
--steps steps after warm-up), on GPT-2 small's 148 fp32 parameter tensors with random gradients, for
ours eager (AdamW; every rule --rules names), ours compiled (torch.compile(opt.step, fullgraph=True)
after one eager step, lr a device tensor), ours captured in a CUDA graph (warm-up on a side stream,
one step() captured, replayed), torch fused AdamW, torch foreach AdamW and torch's compiled-optimizer
recipe (torch.compile around opt.step() of torch.optim.AdamW with a tensor lr); compiled and captured
steps with the same gradients only. The host time of the step() call is recorded beside it. Each
ratio is against torch fused AdamW; an implementation that fails is a "failed: <error>" row, not a
crash.

Run: `python -m scripts.step_overhead` (--help for the options); writes step_overhead.csv and
step_overhead.md under runs/<machine>/, which git ignores; `--out reports/<machine>` writes them into
the committed reports/ instead, to keep them.
"""
import os

import torch

# Before anything imports triton: without a GPU, Triton's kernels run on CPU tensors only under its
# interpreter (as tests/conftest.py sets it).
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy  # noqa: E402
from tqdm import tqdm  # noqa: E402

import optim  # noqa: E402
from scripts.report import (OUT_HELP, describe, machine, markdown_table, report_directory,  # noqa: E402
                            write_csv, written)

SHAPE = (4, 4)  # 16 elements; 2-D, so Tiger treats each tensor as a weight matrix
TENSORS = (148, 2000)  # GPT-2 small's tensor count, and a model of many small tensors
MODES = ("same", "fresh")
WARM_UP_STEPS = 2  # the first step makes the state; the second runs as every later one
GOAL_RATIO = 0.5  # ours at most half of torch fused AdamW's host time
FUSED, FOREACH, COMPILED = "torch fused", "torch foreach", "torch.compile(torch)"
OURS = "ours"
OURS_COMPILED = "ours, compiled"  # torch.compile(step, fullgraph=True): one op, whose graph guards every param


def under_goal(implementation: str) -> bool:
    """The rows the goal is about: ours, and on a GPU each way of running ours; on a CPU the compiled step
    is shown beside the eager one, not judged (its extra host time is torch's guards and version bumps)."""
    return implementation.startswith(OURS) and implementation != OURS_COMPILED


@dataclass(frozen=True)
class Case:
    """One of our optimizers: a registry rule with some of its hyperparameters changed."""
    label: str
    rule: str
    overrides: dict = field(default_factory=dict)

    def make(self, params, **extra):
        return getattr(optim, self.rule)(params, **{**self.overrides, **extra}, impl="triton")

    @property
    def nonnegative(self) -> bool:
        return optim.RULES[self.rule].nonnegative_params

    @property
    def default_lr(self) -> float:
        return float(optim.RULES[self.rule].defaults["lr"])


def cases() -> dict:
    """label -> Case: every rule with its defaults, and SGD with momentum (the buffer made by the first step)."""
    table = {name: Case(name, name) for name in optim.RULES}
    table["SGD (momentum)"] = Case("SGD (momentum)", "SGD", {"momentum": 0.9})
    return table


ALIASES = {"SGD-momentum": "SGD (momentum)"}  # the label without a space, for the command line


def resolve_rules(names) -> list:
    table = cases()
    labels = list(table) if names is None else [ALIASES.get(name, name) for name in names]
    unknown = [label for label in labels if label not in table]
    if unknown:
        raise ValueError(f"unknown rules {unknown}; known: {list(table)} (or SGD-momentum)")
    return [table[label] for label in labels]


def failure(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"failed: {type(error).__name__}" + (f": {text[0][:200]}" if text else "")


# ---------------------------------------------------------------------------------------------------
# Without a GPU: host time, launches made free under the interpreter


class LaunchCounter:
    count = 0


@contextlib.contextmanager
def noop_launches():
    """Every Triton launch returns at once, counted, until the block ends; then the original is back."""
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.__dict__["run"]
    counter = LaunchCounter()

    def run(self, *args, grid, warmup, **kwargs):
        counter.count += 1
        return None

    InterpretedFunction.run = run
    try:
        yield counter
    finally:
        InterpretedFunction.run = original


def tiny_params(count, nonnegative, seed):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(SHAPE, generator=generator) for _ in range(count)]
    if nonnegative:
        params = [p.abs() for p in params]
    for p in params:
        p.grad = torch.randn(SHAPE, generator=generator) * 1e-3
    return params


@dataclass
class Contender:
    """One implementation on its own params, ready to be timed step by step."""
    rule: str
    implementation: str
    make: object  # params -> optimizer
    nonnegative: bool = False
    params: list = None
    optimizer: object = None
    times: list = field(default_factory=list)
    launches: list = field(default_factory=list)
    status: str = "measured"


class CompiledStep:
    """Our optimizer with ``torch.compile(optimizer.step, fullgraph=True)`` as its step, made after one
    eager step (which makes the state); the lr a tensor, as the compiled recipe has it."""

    def __init__(self, optimizer):
        optimizer.step()
        self.step = torch.compile(optimizer.step, fullgraph=True)


def contenders(rules) -> list:
    ours = [Contender(case.label, OURS, case.make, case.nonnegative) for case in rules]
    torch_rows = [Contender("AdamW", FUSED, lambda ps: torch.optim.AdamW(ps, fused=True)),
                  Contender("AdamW", FOREACH, lambda ps: torch.optim.AdamW(ps, foreach=True))]
    if any(case.label == "AdamW" for case in rules):  # the compiled step beside the eager one
        ours.append(Contender("AdamW", OURS_COMPILED,
                              lambda ps: CompiledStep(optim.AdamW(ps, lr=torch.tensor(1e-3), impl="triton"))))
    return torch_rows + ours


def fresh_grads(params):
    """New grad tensors (new objects, the same values), as a backward after zero_grad(set_to_none=True)."""
    return [p.grad.clone() for p in params]


def timed_step(optimizer, counter):
    """Seconds of one step() with the garbage collector off, and the launches it made."""
    launches, collecting = counter.count, gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        optimizer.step()
        seconds = time.perf_counter() - start
    finally:
        if collecting:
            gc.enable()
    return seconds, counter.count - launches


def measure_case(count, mode, rules, rounds, counter, progress, seed=0) -> list:
    """Every implementation at ``count`` tensors in gradient ``mode``, interleaved round by round."""
    entries = contenders(rules)
    for index, entry in enumerate(entries):
        try:
            entry.params = tiny_params(count, entry.nonnegative, seed + index)
            entry.optimizer = entry.make(entry.params)
            for _ in range(WARM_UP_STEPS):
                if mode == "fresh":
                    for p, g in zip(entry.params, fresh_grads(entry.params)):
                        p.grad = g
                entry.optimizer.step()
        except Exception as error:  # a rule mid-rewrite: its row says so, the others are measured
            entry.status = failure(error)
    order = random.Random(f"{seed}-{count}-{mode}")
    for _ in range(rounds):
        running = [entry for entry in entries if entry.status == "measured"]
        order.shuffle(running)
        for entry in running:
            if mode == "fresh":
                next_grads = fresh_grads(entry.params)
                for p, g in zip(entry.params, next_grads):
                    p.grad = g
            try:
                seconds, launches = timed_step(entry.optimizer, counter)
            except Exception as error:
                entry.status = failure(error)
                continue
            entry.times.append(seconds)
            entry.launches.append(launches)
        progress.update(1)
    return [cpu_row(entry, count, mode, rounds) for entry in entries]


def cpu_row(entry, count, mode, rounds) -> dict:
    row = dict(rule=entry.rule, implementation=entry.implementation, tensors=count, gradients=mode, rounds=rounds,
               status=entry.status)
    if entry.status == "measured":
        median, low, high = numpy.quantile(numpy.array(entry.times) * 1e3, [0.5, 0.2, 0.8])
        row.update(median_ms=float(median), p20_ms=float(low), p80_ms=float(high),
                   us_per_tensor=float(median) * 1e3 / count,
                   launches_per_step=(max(entry.launches) if entry.implementation == OURS else ""))
    return row


def add_ratios(rows) -> list:
    """Each measured row's median over torch fused AdamW's median of the same tensors and gradient mode."""
    fused = {(r["tensors"], r["gradients"]): r["median_ms"] for r in rows
             if r["implementation"] == FUSED and r["status"] == "measured"}
    for row in rows:
        baseline = fused.get((row["tensors"], row["gradients"]))
        if row["status"] == "measured" and baseline:
            row["ratio_to_torch_fused"] = row["median_ms"] / baseline
            if under_goal(row["implementation"]):
                row["goal"] = "met" if row["ratio_to_torch_fused"] <= GOAL_RATIO else "not met"
        elif under_goal(row["implementation"]):
            row["goal"] = "not measured"
    return rows


def run(tensors=TENSORS, rounds=50, rules=None, out=None, modes=MODES, progress=True, seed=0, echo=True) -> list:
    """The CPU profile: rows for every (tensors, mode, implementation), written as CSV and markdown under
    ``out`` (default runs/<machine>/, untracked), the table printed unless ``echo`` is False."""
    if torch.cuda.is_available():
        raise RuntimeError("run() is the CPU profile (launches made free under the interpreter); on a GPU "
                           "use run_gpu()")
    selected = resolve_rules(rules)
    facts = machine(torch.device("cpu"))
    started = time.perf_counter()
    rows = []
    bar = tqdm(total=len(tensors) * len(modes) * rounds, desc="step overhead", disable=not progress)
    with noop_launches() as counter, bar:
        for count in tensors:
            for mode in modes:
                rows += measure_case(count, mode, selected, rounds, counter, bar, seed)
    add_ratios(rows)
    seconds = time.perf_counter() - started
    write_reports(facts, rows, out, cpu_markdown(facts, rows, rounds, seconds))
    if echo:
        print(f"Step overhead on {describe(facts)}; launches made no-ops; {rounds} interleaved rounds; "
              f"{seconds:.0f} s")
        print(text_table(rows))
    return rows


# ---------------------------------------------------------------------------------------------------
# On a GPU: wall time of a step with CUDA events. UNTESTED here (no GPU on the CPU machines); written for
# torch 2.11 / triton 3.6 on an H200.

GPU_WARM_UP_CALLS = 3  # calls of the step function before timing (a compiled step compiles on the first)


def gpu_params(shapes, nonnegative, seed, device):
    generator = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in shapes:
        param = torch.randn(shape, device=device, generator=generator)
        param = param.abs() if nonnegative else param
        param.grad = torch.randn(shape, device=device, generator=generator) * 1e-3
        params.append(param)
    return params


def ours_eager(case):
    return lambda params: case.make(params).step


def ours_compiled(case):
    def make(params):
        optimizer = case.make(params, lr=torch.tensor(case.default_lr, device=params[0].device))
        optimizer.step()  # eagerly: the first step makes the state
        torch._dynamo.reset()
        return torch.compile(optimizer.step, fullgraph=True)
    return make


def ours_captured(case):
    def make(params):
        """torch.cuda.graphs' recipe: warm up on a side stream, capture one step(), replay it."""
        optimizer = case.make(params, lr=torch.tensor(case.default_lr, device=params[0].device))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARM_UP_STEPS):
                optimizer.step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            optimizer.step()
        return graph.replay  # the bound method keeps the graph alive
    return make


def torch_adamw(**switches):
    return lambda params: torch.optim.AdamW(params, **switches).step


def torch_compiled(params):
    """torch's compiled-optimizer recipe: torch.compile around opt.step(), lr a tensor so that a changing
    lr does not recompile. Its first call compiles (dynamo makes the foreach step capturable)."""
    optimizer = torch.optim.AdamW(params, lr=torch.tensor(1e-3, device=params[0].device))
    torch._dynamo.reset()

    @torch.compile(fullgraph=False)
    def step():
        optimizer.step()
    return step


def gpu_contenders(rules) -> list:
    """(rule, implementation, make(params) -> step function, nonnegative, modes it runs in)."""
    # Compiled steps and the CUDA graph run with the same gradients only: a graph reads the gradients it
    # was captured with, and a compiled step may guard on the grad tensors and recompile at every fresh
    # one (minutes of a GPU's time, and no longer the step's cost).
    same = ("same",)
    entries = [("AdamW", FUSED, torch_adamw(fused=True), False, MODES),
               ("AdamW", FOREACH, torch_adamw(foreach=True), False, MODES),
               ("AdamW", COMPILED, torch_compiled, False, same)]
    for case in rules:
        entries += [(case.label, f"{OURS} eager", ours_eager(case), case.nonnegative, MODES),
                    (case.label, f"{OURS} compiled", ours_compiled(case), case.nonnegative, same),
                    (case.label, f"{OURS} CUDA graph", ours_captured(case), case.nonnegative, same)]
    return entries


def cuda_step_times(step, params, mode, steps):
    """Per step: (device wall ms from CUDA events after a sync, host ms of the call)."""
    walls, hosts = [], []
    for index in range(GPU_WARM_UP_CALLS + steps):
        if mode == "fresh":
            next_grads = fresh_grads(params)
            for p, g in zip(params, next_grads):
                p.grad = g
        torch.cuda.synchronize()  # an empty queue: the events see this step's host time and kernels
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        collecting = gc.isenabled()
        gc.disable()
        try:
            began = time.perf_counter()
            start.record()
            step()
            end.record()
            host = time.perf_counter() - began
        finally:
            if collecting:
                gc.enable()
        end.synchronize()
        if index >= GPU_WARM_UP_CALLS:
            walls.append(start.elapsed_time(end))
            hosts.append(host * 1e3)
    return walls, hosts


def run_gpu(rules=None, steps=50, modes=MODES, out=None, progress=True, echo=True) -> list:
    """The GPU profile (UNTESTED on the CPU machines): GPT-2 small's parameter list, each implementation
    in turn on its own params, freed before the next."""
    from scripts.gpt import GPT2_SMALL, parameter_shapes

    device = torch.device("cuda")
    torch._dynamo.config.recompile_limit = 64  # never a silent fall-back to eager under a compiled label
    selected = resolve_rules(["AdamW"] if rules is None else rules)
    shapes = parameter_shapes(GPT2_SMALL)
    facts = machine(device)
    work = [(entry, mode) for entry in gpu_contenders(selected) for mode in modes if mode in entry[4]]
    rows = []
    for (rule, implementation, make, nonnegative, _), mode in tqdm(work, desc="step overhead", disable=not progress):
        row = dict(rule=rule, implementation=implementation, tensors=len(shapes), gradients=mode, steps=steps)
        params = step = None
        try:
            params = gpu_params(shapes, nonnegative, 0, device)
            step = make(params)
            walls, hosts = cuda_step_times(step, params, mode, steps)
            median, low, high = numpy.quantile(walls, [0.5, 0.2, 0.8])
            row.update(status="measured", median_ms=float(median), p20_ms=float(low), p80_ms=float(high),
                       host_ms=float(numpy.median(hosts)), us_per_tensor=float(median) * 1e3 / len(shapes))
        except Exception as error:  # noqa: BLE001 — every failure is a row, never the end of the run
            row["status"] = failure(error)
        rows.append(row)
        del params, step
        torch._dynamo.reset()  # compiled code holds its optimizer's tensors
        gc.collect()
        torch.cuda.empty_cache()
    add_ratios(rows)
    write_reports(facts, rows, out, gpu_markdown(facts, rows, steps, len(shapes)))
    if echo:
        print(f"Step overhead on {describe(facts)}; CUDA events, median of {steps} steps")
        print(text_table(rows, host=True))
    return rows


# ---------------------------------------------------------------------------------------------------
# Reports


def cell(row, key, spec):
    value = row.get(key, "")
    return format(value, spec) if isinstance(value, float) else str(value)


def columns(host=False) -> dict:
    table = {"rule": lambda r: r["rule"], "implementation": lambda r: r["implementation"],
             "tensors": lambda r: r["tensors"], "gradients": lambda r: r["gradients"],
             "median ms": lambda r: cell(r, "median_ms", ".3f") if r["status"] == "measured" else r["status"]}
    if host:
        table["host ms"] = lambda r: cell(r, "host_ms", ".3f")
    table.update({"µs / tensor": lambda r: cell(r, "us_per_tensor", ".2f"),
                  "ratio to torch fused": lambda r: cell(r, "ratio_to_torch_fused", ".2f"),
                  f"goal ≤ {GOAL_RATIO}": lambda r: r.get("goal", "")})
    if not host:
        table["launches"] = lambda r: r.get("launches_per_step", "")
    return table


def ordered(rows) -> list:
    """Grouped by (tensors, mode), torch's rows first."""
    rank = {FUSED: 0, FOREACH: 1, COMPILED: 2}
    return sorted(rows, key=lambda r: (r["tensors"], MODES.index(r["gradients"]),
                                       rank.get(r["implementation"], 3)))


def text_table(rows, host=False) -> str:
    spec = columns(host)
    lines = [list(spec)] + [[str(f(r)) for f in spec.values()] for r in ordered(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(spec))]
    text = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def goal_lines(rows) -> list:
    ours = [r for r in rows if under_goal(r["implementation"])]
    met = [r for r in ours if r.get("goal") == "met"]
    lines = [f"Goal: each of our steps at most {GOAL_RATIO}× torch fused AdamW's time on the same tensors "
             f"and gradient mode. Met by {len(met)} of {len(ours)} rows."]
    missed = [r for r in ours if r.get("goal") != "met"]
    if missed:
        worst = [r for r in missed if "ratio_to_torch_fused" in r]
        if worst:
            r = max(worst, key=lambda r: r["ratio_to_torch_fused"])
            lines.append(f"Furthest from it: {r['rule']} ({r['implementation']}) at {r['tensors']} tensors, "
                         f"{r['gradients']} gradients: {r['ratio_to_torch_fused']:.2f}×.")
        failed = [r for r in missed if r["status"] != "measured"]
        lines += [f"{r['rule']} ({r['implementation']}), {r['tensors']} tensors, {r['gradients']}: {r['status']}"
                  for r in failed]
    return lines


def cpu_markdown(facts, rows, rounds, seconds) -> str:
    return "\n".join([
        "# Step overhead: host time of one optimizer step\n",
        f"Measured on {describe(facts)}; the run took {seconds:.0f} s.\n",
        "## What was measured\n",
        "The host time of one `step()`: the Python around the kernels. Triton ran under its CPU interpreter "
        "with every launch made a no-op (`triton.runtime.interpreter.InterpretedFunction.run` replaced by a "
        "function that counts the launch and returns; put back after the run), so each step of ours is its "
        "host work alone. Every param is a 16-element fp32 tensor of shape (4, 4), so torch's "
        "`AdamW(fused=True)` on the same tensors, the baseline, is almost all host time too; torch's "
        "`AdamW(foreach=True)` is listed beside it.\n",
        f"Each of our rules runs with impl=\"triton\" and its defaults (EG on non-negative params), plus SGD "
        f"with momentum 0.9. Gradient modes: *same* (the .grad tensors stay the same objects between steps) "
        f"and *fresh* (before each step every param gets a new grad tensor, made and assigned outside the "
        f"timed region, as after zero_grad(set_to_none=True)). Each optimizer was warmed up with "
        f"{WARM_UP_STEPS} steps; then each figure is the median of {rounds} rounds in which every "
        f"implementation made one step, in a shuffled order, with the garbage collector disabled around "
        f"each timed call. \"launches\": Triton launches per step (made free here; on a GPU each costs "
        f"Triton's own launch path, about 20–40 µs, on top).\n",
        "## Goal\n", *[f"- {line}" for line in goal_lines(rows)], "",
        "## Results\n",
        markdown_table(ordered(rows), columns()), ""])


def gpu_markdown(facts, rows, steps, count) -> str:
    return "\n".join([
        "# Step overhead on a GPU: wall time of one optimizer step\n",
        f"Measured on {describe(facts)}.\n",
        "## What was measured\n",
        f"GPT-2 small's {count} fp32 parameter tensors with random gradients. Per step: a device sync, "
        f"then CUDA events around the step call: the wall time of a step that starts on an idle device "
        f"(host time and kernels, whichever is longer); the median over {steps} steps after "
        f"{GPU_WARM_UP_CALLS} warm-up calls. \"host ms\": the median time until the call returned. "
        "Ours: eager step(); compiled (torch.compile(step, fullgraph=True) after one eager step, lr a "
        "device tensor); a CUDA graph (warm-up on a side stream, one step() captured, replayed; same "
        "gradients only). torch: AdamW fused, foreach, and torch.compile around step() of AdamW with a "
        "tensor lr (torch's compiled-optimizer recipe). *fresh* (eager steps only): before each step every "
        "param gets a new grad tensor, made outside the timed region.\n",
        "## Goal\n", *[f"- {line}" for line in goal_lines(rows)], "",
        "## Results\n",
        markdown_table(ordered(rows), columns(host=True)), ""])


def write_reports(facts, rows, out, text):
    directory = report_directory(facts, out)
    write_csv(directory / "step_overhead.csv", facts, ordered(rows))
    (directory / "step_overhead.md").write_text(text)
    return directory


def main(argv=None):
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m scripts.step_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensors", nargs="+", type=int, default=list(TENSORS),
                        help="tensor counts of the CPU profile (default: 148 2000); a GPU run takes GPT-2 small's list")
    parser.add_argument("--rounds", type=int, default=50,
                        help="interleaved timed rounds of the CPU profile, one step of each implementation per round "
                             "(default: 50)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per implementation on a GPU (default: 50)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="gradient modes (default: both)")
    parser.add_argument("--rules", nargs="+", metavar="RULE",
                        help="our rules to measure: " + ", ".join(list(cases())[:-1]) + ", SGD-momentum (default: "
                             "all of them on a CPU, AdamW on a GPU)")
    parser.add_argument("--out", help=OUT_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        resolve_rules(args.rules)
    except ValueError as error:
        parser.error(str(error))
    if on_gpu:
        rows = run_gpu(args.rules, args.steps, tuple(args.modes), args.out, progress=not args.no_progress)
    else:
        rows = run(args.tensors, args.rounds, args.rules, args.out, tuple(args.modes), progress=not args.no_progress)
    print("\n".join(goal_lines(rows)))
    directory = report_directory(machine(torch.device("cuda" if on_gpu else "cpu")), args.out)
    print(written(directory, ["step_overhead.csv", "step_overhead.md"]))


if __name__ == "__main__":
    main()
