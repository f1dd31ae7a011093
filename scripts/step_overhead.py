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
whether it meets the goal: ratio <= 0.5. torch's foreach AdamW is measured beside it, and so is torch's
foreach implementation of every rule with a torch twin (``Rule.torch_twin``, our default lr): each of ours
also has its ratio to its twin's median, same tensors and mode.

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

from fusedoptim import optim  # noqa: E402
from scripts.report import OUT_HELP, describe, machine, markdown_table, report_directory, written  # noqa: E402
from scripts.step_overhead_gpu import run_gpu  # noqa: E402
from scripts.step_overhead_rows import (FOREACH, FUSED, MODES, OURS, OURS_COMPILED, WARM_UP_STEPS,  # noqa: E402
                                        add_ratios, cases, columns, failure, fresh_grads, goal_lines, ordered,
                                        resolve_rules, text_table, write_reports)

SHAPE = (4, 4)  # 16 elements; 2-D, so Tiger treats each tensor as a weight matrix
TENSORS = (148, 2000)  # GPT-2 small's tensor count, and a model of many small tensors


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
    foreach = {"AdamW": Contender("AdamW", FOREACH, lambda ps: torch.optim.AdamW(ps, foreach=True))}
    for case in rules:  # torch's foreach implementation of each rule with a twin: the second ratio's baseline
        if case.torch_twin is not None:
            foreach.setdefault(case.label, Contender(case.label, FOREACH, case.make_twin_foreach))
    torch_rows = [Contender("AdamW", FUSED, lambda ps: torch.optim.AdamW(ps, fused=True)), *foreach.values()]
    if any(case.label == "AdamW" for case in rules):  # the compiled step beside the eager one
        ours.append(Contender("AdamW", OURS_COMPILED,
                              lambda ps: CompiledStep(optim.AdamW(ps, lr=torch.tensor(1e-3), impl="triton"))))
    return torch_rows + ours


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
        "`AdamW(foreach=True)` is listed beside it, and so is torch's foreach implementation of each rule that has "
        "a twin in torch.optim (`Adam(foreach=True)`, ..., with our default lr), each on its own tensors of the "
        "same shapes: every row of ours has its ratio to that row of the same rule too.\n",
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
