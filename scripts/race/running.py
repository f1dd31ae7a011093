"""How the race trains: one run (an entry, a task, an lr, a seed, a state precision), the sweep of every
run over worker processes, the choice of each entry's lr, and the fused-against-reference check.

A run starts from its seed's weights and minibatches (scripts.race.tasks), steps with the reference
impl (under the CPU's Triton interpreter a fused step is about a hundred times slower; the check below
shows on a sample that the kernels take the same steps), validates every ``every`` steps on the held-out
set, and stops as diverged (validation loss inf) at the first non-finite training loss.
"""
import concurrent.futures
import math
import multiprocessing
from typing import NamedTuple, Optional

import torch
from tqdm import tqdm

from fusedoptim.optim.impl import kernels_run_on
from scripts.race import entries as race_entries
from scripts.race import tasks as race_tasks
from scripts.memory import tensor_bytes
from scripts.reproductions import common, tiny_transformer

# The lr grid, the same for every entry: its row's default lr times these, centred on the default (the
# authors' choice) and reaching ×30 above it: at this few steps large lrs win, and a grid stopping at ×10
# left half the entries' best lr on its edge (the race of 2026-12-07). The factors of about 3 give "a tenth
# of AdamW's lr" (Lion's and Tiger's claim) as a point of the grid.
LR_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SEEDS = (0, 1)
QUANTIZED = "int8"  # the quantized state precision every row that takes it is also run with


class Job(NamedTuple):
    entry: str
    task: race_tasks.Task
    lr: float
    seed: int
    steps: int
    every: int
    state_dtype: Optional[str] = None


def one_thread():
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only add synchronisation (common.one_thread)


def descend(entry, job: Job, model, optimizers: list, result: dict) -> None:
    """``job.steps`` steps of ``model``, its validation losses appended to result["validation"]; it stops
    at the first non-finite training loss, with an inf there."""
    task = job.task
    schedulers = race_entries.schedulers(entry, optimizers, job.steps)
    switching = [optimizer for optimizer in optimizers if race_entries.switchable(optimizer)]
    for optimizer in switching:
        optimizer.train()
    for step, (inputs, targets) in enumerate(race_tasks.batches(task, job.steps, job.seed), start=1):
        def closure():
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model, inputs, targets)
            loss.backward()
            return loss
        loss = optimizers[0].step(closure) if entry.needs_closure else closure()
        for optimizer in optimizers[1 if entry.needs_closure else 0:]:
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        if not math.isfinite(loss.item()):
            result["validation"].append((step, math.inf))
            return
        if step % job.every == 0 or step == job.steps:
            for optimizer in switching:
                optimizer.eval()  # validate at the averaged point x, as schedule-free is evaluated
            loss = race_tasks.validation_loss(task, model)
            for optimizer in switching:
                optimizer.train()
            result["validation"].append((step, loss if math.isfinite(loss) else math.inf))


def train(job: Job, entries: dict) -> dict:
    """One run: its validation curve [(step, loss)], its final validation loss, the fingerprint of its
    initial weights and the bytes of its optimizer state (what shows the seed and the precision took
    effect), or why it did not run."""
    entry, task = entries[job.entry], job.task
    result = dict(entry=job.entry, task=task.name, lr=job.lr, seed=job.seed,
                  precision=job.state_dtype or "fp32", validation=[], final=math.inf, reason="")
    model = task.model(job.seed)
    result["initial_weights"] = tiny_transformer.fingerprint(model)
    try:
        optimizers = race_entries.build(entry, model, job.lr, state_dtype=job.state_dtype)
    except (TypeError, ValueError) as error:  # the rule refuses the precision: its own words
        return {**result, "reason": str(error).split("\n")[0]}
    try:
        descend(entry, job, model, optimizers, result)
    except Exception as error:  # one rule failing must not end a race of every rule: its row says why
        return {**result, "final": math.inf, "reason": f"failed: {type(error).__name__}: {str(error).splitlines()[0]}"}
    if not math.isfinite(result["validation"][-1][1]):
        return result  # diverged
    result["final"] = result["validation"][-1][1]
    result["state_bytes"] = tensor_bytes(value for optimizer in optimizers for state in optimizer.state.values()
                                         for value in state.values() if isinstance(value, torch.Tensor))
    return result


FORKED_ENTRIES = {}  # the entries of the run_all that forked this worker


def train_forked(job: Job) -> dict:
    return train(job, FORKED_ENTRIES)


def run_all(jobs: list, entries: dict, workers: int, description: str) -> list:
    """Every job's result, in the jobs' order; ``workers`` > 1: over that many processes (forked, so
    that they share the parent's entries), each with one thread."""
    if workers <= 1 or len(jobs) <= 1:
        with common.one_thread():
            return [train(job, entries) for job in tqdm(jobs, desc=description, leave=False)]
    FORKED_ENTRIES.clear()
    FORKED_ENTRIES.update(entries)  # the workers, forked next, inherit them: a row's functions do not pickle
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=one_thread) as pool:
        futures = [pool.submit(train_forked, job) for job in jobs]
        for _ in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=description, leave=False):
            pass
        return [future.result() for future in futures]


def mean_and_spread(values: list) -> tuple:
    """The seeds' mean and half their range: what the table reports and the claims compare."""
    finite = [value for value in values if math.isfinite(value)]
    if len(finite) < len(values) or not values:
        return math.inf, math.inf
    return sum(values) / len(values), (max(values) - min(values)) / 2


def best_lrs(results: list) -> dict:
    """(entry, task) -> the lr with the lowest mean final validation loss over the seeds (fp32 runs)."""
    losses = {}
    for result in results:
        losses.setdefault((result["entry"], result["task"]), {}).setdefault(result["lr"], []).append(result["final"])
    return {key: min(by_lr, key=lambda lr: (mean_and_spread(by_lr[lr])[0], lr)) for key, by_lr in losses.items()}


def steps_to_reach(result: dict, target: float):
    """The first validated step with a validation loss at most ``target`` (None: never)."""
    return next((step for step, loss in result["validation"] if loss <= target), None)


def compare_impls(entries: dict, task: race_tasks.Task, steps: int = 3, sample: int = 3, make=None) -> list:
    """The first ``sample`` runnable entries with a kernel, each stepped ``steps`` times with impl="triton"
    and with impl="reference" from the same weights with the same gradients (the reference model's,
    copied): the largest |Δθ| beside its bound, steps × (atol + rtol·max|θ|) of the row's fp32 tolerance.
    [] where the kernels cannot run here (no GPU, no TRITON_INTERPRET=1). ``make``: the builder (a test
    swaps it to plant a difference)."""
    if not kernels_run_on([torch.device("cpu")]):
        return []
    make = make or race_entries.build
    chosen = [entry for entry in entries.values()
              if not entry.reason and entry.schedule is None and getattr(entry.row, "has_kernel", False)][:sample]
    checks = []
    for entry in chosen:
        models = {impl: task.model(0) for impl in ("triton", "reference")}
        lr = entry.default_lr
        optimizers = {impl: make(entry, model, lr, impl=impl) for impl, model in models.items()}
        for inputs, targets in race_tasks.batches(task, steps, 0):
            task.loss(models["reference"], inputs, targets).backward()
            for source, target in zip(models["reference"].parameters(), models["triton"].parameters()):
                target.grad = source.grad.clone()
            for impl in models:
                for optimizer in optimizers[impl]:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        pairs = list(zip(models["triton"].parameters(), models["reference"].parameters()))
        tolerance = entry.row.tolerances[torch.float32]
        scale = max(reference.abs().max().item() for _, reference in pairs)
        difference = max((fused - reference).abs().max().item() for fused, reference in pairs)
        bound = steps * (tolerance.atol + tolerance.rtol * scale)
        checks.append(dict(entry=entry.name, task=task.name, steps=steps, difference=difference, bound=bound,
                           equal=difference <= bound))
    return checks
