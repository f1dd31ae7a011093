"""The step-overhead profile on a GPU: the wall time of a step with CUDA events (scripts/step_overhead.py
describes it and is the command). UNTESTED here (no GPU on the CPU machines); written for torch 2.11 /
triton 3.6 on an H200."""
import gc
import time

import numpy
import torch
from tqdm import tqdm

from scripts.report import describe, machine, markdown_table
from scripts.step_overhead_rows import (COMPILED, FOREACH, FUSED, MODES, OURS, WARM_UP_STEPS, add_ratios, columns,
                                        failure, fresh_grads, goal_lines, ordered, resolve_rules, text_table,
                                        write_reports)

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

