r"""A fair race between every rule of the registry on three CPU-sized tasks (issue 27, item 2).

Every rule the registry holds when the race runs (scripts.race.entries: element-wise rows and shaped
rules, and "AdamW + cosine", the scheduled baseline a claim asks for) trains each task of scripts.race.tasks
(a character GPT, an MLP regression, a conv net on synthetic images; held-out validation data) with its
lr swept over its row's default times LR_FACTORS, two seeds, and the same step budget for every entry.
Per rule and task it reports the best validation loss over the lrs (the mean over the seeds, the spread
as half their range) and the steps to reach the task's fixed target loss (validated every tenth of the
run; the mean over the seeds, "—" where a seed never reached it). Then each rule that takes int8 state
(asked of its optimizer: a refusal is reported in its own words) runs again with it at its fp32-best lr
(not re-swept, to halve the cost; the question is what the storage changes at one lr).

Runs step with the reference impl; ``running.compare_impls`` checks on a sample (three rules, three
steps, the MLP) that impl="triton" takes the same steps, when the kernels can run here (GPU, or
TRITON_INTERPRET=1 as ./dev sets it). The claims of scripts.race.claims are decided from the numbers.

The budget: ``--rules AdamW,Lion,Muon,LBFGS`` (130 fp32 runs, 24 int8, the check) took 137 CPU-seconds
here (10 min of wall time on a machine loaded 4- to 5-fold), about 34 CPU-seconds per entry; the ~31
entries of the registry once issue 27's rules land make about 1,050, some 9 minutes on the 2 quiet
cores (2 workers), under the 20 allowed.
"""
import argparse
import math
import sys
import textwrap
import time

from matplotlib import pyplot

from fusedoptim.optim.registry import RULES, SHAPED_RULES
from scripts.race import claims as race_claims
from scripts.race import entries as race_entries
from scripts.race import running
from scripts.race import tasks as race_tasks
from scripts.report import markdown_table
from scripts.reproductions import common

NAME = "race"
CLAIM = ("Every rule of the registry, its lr swept around its default, two seeds, the same budget: ranked by "
         "validation loss on a tiny GPT, an MLP regression and a conv net, in fp32 and int8 state")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The race's own options on ``python -m scripts.reproductions race``'s command line."""
    parser.add_argument("--rules", type=lambda text: text.split(","), help="comma-separated entries (default all)")
    parser.add_argument("--tasks", type=lambda text: text.split(","),
                        help=f"comma-separated tasks (default all): {', '.join(race_tasks.TASKS)}")


def select_tasks(names=None, steps: int = None) -> list:
    """The tasks named (None: all); ``steps``: every task's budget instead of its own (the tests' tiny one)."""
    unknown = [name for name in names or () if name not in race_tasks.TASKS]
    if unknown:
        raise ValueError(f"--tasks: no task named {', '.join(unknown)}; the tasks are {', '.join(race_tasks.TASKS)}")
    return [race_tasks.TASKS[name]._replace(steps=steps or race_tasks.TASKS[name].steps)
            for name in names or race_tasks.TASKS]


def jobs_for(entries: dict, tasks: list, lr_factors, seeds) -> list:
    """Every fp32 run, the GPT's first (the longest, so that the workers end together), then the
    large-batch variant for its claim's entries."""
    large = race_claims.LARGE_BATCH
    tasks = tasks + [race_tasks.with_batch(task, large["factor"]) for task in tasks if task.name == large["task"]]
    return [running.Job(name, task, entry.default_lr * factor, seed, task.steps, max(1, task.steps // 10))
            for task in tasks for name, entry in entries.items() if not entry.reason
            and (task.name in race_tasks.TASKS or name in large["entries"])
            for factor in lr_factors for seed in seeds]


def summarise(results: list, entries: dict, tasks: list) -> list:
    """One row per (entry, task, precision) run: the best lr's seeds; one per entry that did not run."""
    rows = []
    targets = {task.name: task.target for task in tasks}
    grouped = {}
    for result in results:
        grouped.setdefault((result["entry"], result["task"], result["precision"], result["lr"]), []).append(result)
    best = running.best_lrs([result for result in results if result["precision"] == "fp32"])
    tried = {}
    for result in results:
        tried.setdefault((result["entry"], result["task"]), set()).add(result["lr"])
    for (name, task, precision, lr), seeds in grouped.items():
        if best.get((name, task)) != lr:
            continue
        loss, spread = running.mean_and_spread([result["final"] for result in seeds])
        reached = [running.steps_to_reach(result, targets.get(task, -math.inf)) for result in seeds]
        rows.append(dict(kind="summary", rule=name, task=task, precision=precision, lr=lr,
                         lr_factor=lr / entries[name].default_lr, loss=loss, spread=spread,
                         # the grid's smallest or largest lr: the optimum may lie beyond it
                         at_edge=len(tried[name, task]) > 1 and lr in (min(tried[name, task]), max(tried[name, task])),
                         seeds=" ".join(f"{result['final']:.4f}" for result in seeds),
                         steps_to_target=None if None in reached else sum(reached) / len(reached),
                         reason=seeds[0]["reason"]))
    rows += [dict(kind="summary", rule=name, task=task.name, precision="fp32", lr=None, lr_factor=None,
                  at_edge=False, loss=math.inf, spread=math.inf, seeds="", steps_to_target=None, reason=entry.reason)
             for name, entry in entries.items() if entry.reason for task in tasks if task.name in race_tasks.TASKS]
    return sorted(rows, key=lambda row: (row["task"], row["precision"], row["loss"], row["rule"]))


def run(out=None, rules=None, tasks=None, steps: int = None, lr_factors=running.LR_FACTORS,
        seeds=running.SEEDS, workers: int = 2, check_steps: int = 3, quantized: bool = True) -> dict:
    """``rules``/``tasks``: names to narrow to (None: all); ``steps``: every task's budget (None: each
    task's own, tasks.TASKS); ``check_steps``: of the fused check (0: none);
    ``quantized``: also run the int8 state at each rule's fp32-best lr."""
    start = time.perf_counter()
    entries = race_entries.select(race_entries.all_entries(race_claims.SCHEDULED), rules)
    chosen_tasks = select_tasks(tasks, steps)
    jobs = jobs_for(entries, chosen_tasks, lr_factors, seeds)
    results = running.run_all(jobs, entries, workers, "fp32 runs")
    if quantized:
        best = running.best_lrs(results)
        by_key = {(job.entry, job.task.name): job for job in jobs if job.task in chosen_tasks}
        results += running.run_all([job._replace(lr=best[key], seed=seed, state_dtype=running.QUANTIZED)
                                    for key, job in by_key.items() for seed in seeds], entries, workers, "int8 runs")
    all_tasks = chosen_tasks + sorted({job.task for job in jobs if job.task not in chosen_tasks})
    summaries = summarise(results, entries, all_tasks)
    checks = running.compare_impls(entries, race_tasks.TASKS["mlp"], check_steps) if check_steps else []
    by_key = {(row["rule"], row["task"], row["precision"]): row for row in summaries if not row["reason"]}
    large = [task.name for task in all_tasks if task not in chosen_tasks]
    verdicts = race_claims.judge(by_key, set(RULES) | set(SHAPED_RULES), [task.name for task in chosen_tasks],
                                 large[0] if large else None)
    results_out = dict(summaries=summaries, runs=results, checks=checks, claims=verdicts, tasks=all_tasks,
                       elapsed=time.perf_counter() - start)
    write(results_out, out)
    return results_out


def table(summaries: list) -> str:
    def number(value, digits=4):
        return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
    return markdown_table(summaries, {
        "task": lambda row: row["task"], "rule": lambda row: row["rule"], "state": lambda row: row["precision"],
        "lr": lambda row: "" if row["lr"] is None else f"{row['lr']:g}",
        "× default": lambda row: "" if row["lr_factor"] is None else
                     f"{row['lr_factor']:g}" + (" (edge)" if row["at_edge"] else ""),
        "validation loss": lambda row: number(row["loss"]), "± spread": lambda row: number(row["spread"]),
        "seeds": lambda row: row["seeds"], "steps to target": lambda row: number(row["steps_to_target"], 0),
        "not run because": lambda row: row["reason"]})


def claims_table(verdicts: list) -> str:
    return markdown_table(verdicts, {"claim": lambda row: row["claim"], "task": lambda row: row["task"],
                                     "verdict": lambda row: row["verdict"], "numbers": lambda row: row["numbers"]})


def draw(results: dict):
    tasks = [task for task in results["tasks"]
             if any(row["task"] == task.name and math.isfinite(row["loss"]) for row in results["summaries"])]
    figure, axes = pyplot.subplots(1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 7), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        rows = [row for row in results["summaries"] if row["task"] == task.name and math.isfinite(row["loss"])]
        ranked = sorted({row["rule"] for row in rows if row["precision"] == "fp32"},
                        key=lambda rule: next(row["loss"] for row in rows if row["rule"] == rule), reverse=True)
        for offset, precision, colour in ((0.15, "fp32", "tab:blue"), (-0.15, "int8", "tab:orange")):
            label = precision
            for position, rule in enumerate(ranked):
                row = next((row for row in rows if row["rule"] == rule and row["precision"] == precision), None)
                if row is None:
                    continue
                axis.errorbar(row["loss"], position + offset, xerr=row["spread"], fmt="o", color=colour, ms=4,
                              label=label)
                label = None
                seeds = [float(value) for value in row["seeds"].split()]
                axis.plot(seeds, [position + offset] * len(seeds), "|", color=colour, ms=8)
        axis.set_yticks(range(len(ranked)), ranked, fontsize=7)
        # log scale: a rule that barely trains (loss near the start) would squeeze the others into a corner
        axis.set_xscale("log")
        axis.set(xlabel="validation loss at the best lr, log scale\n(mean ± half range of the seeds; ticks: each seed)",
                 title=textwrap.fill(f"{task.name}: {task.description}", 70))
        axis.xaxis.label.set_fontsize(8)
        axis.title.set_fontsize(7)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def write(results: dict, out=None) -> None:
    rows = results["summaries"] + [dict(kind="claim", **verdict) for verdict in results["claims"]]
    rows += [dict(kind="triton vs reference", **check) for check in results["checks"]]
    rows += [dict(kind="run", rule=run["entry"], task=run["task"], precision=run["precision"], lr=run["lr"],
                  seed=run["seed"], loss=run["final"], reason=run["reason"]) for run in results["runs"]]
    directory = common.save(NAME, draw(results), rows, out)
    checks = [f"{check['entry']} on {check['task']}, {check['steps']} steps: max |Δθ| {check['difference']:.1e} "
              f"(bound {check['bound']:.1e}): {'equal' if check['equal'] else 'DIFFERENT'}" for check in results["checks"]]
    text = (f"{table(results['summaries'])}\n\nClaims:\n\n{claims_table(results['claims'])}\n\nimpl='triton' against "
            f"'reference': " + ("; ".join(checks) or "not checked (the kernels cannot run here)") + "\n")
    (directory / f"{NAME}.md").write_text(text)
    print(text)
    steps = ", ".join(f"{task.name} {task.steps}" for task in results["tasks"])
    print(f"{len(results['runs'])} runs (steps: {steps}) in {results['elapsed']:.0f} s")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
