"""Bandwidth profile: how close each rule's step comes to the memory system's copy bandwidth.

For every rule and dtype, over single tensors of 2^12 … 2^28 elements and over a realistic parameter
list (GPT-2 small's 148 tensors, scripts/gpt.py), each implementation's step is timed with
triton.testing.do_bench (median, 20 % and 80 % quantiles) on a GPU, torch.utils.benchmark on a CPU.
Each call steps the next of several buffer sets (params, grads and state), enough of them to be four
times the last-level cache, so a step reads memory, not a cache warmed by the step before.

Bytes moved are the registry's per-element model (Rule.bytes_per_param: θ and g read, θ written,
each state read and written, extra reads), the same for every implementation, so GB/s compares the
time of the same work. The ceiling is the device's copy bandwidth (read + write of one buffer),
measured in the same run.

Implementations: ours fused (one launch per step), ours with one launch per tensor (the lion-pytorch
pattern), our reference, torch.compile of our reference, torch.optim's fused and foreach steps where
torch has the rule, and lion-pytorch where installed. Without a GPU the Triton kernels run only under
the interpreter, whose times say nothing of a GPU: those figures are listed as needing one.

Run: `python -m scripts.bandwidth` (--help for the options); writes bandwidth.csv, bandwidth.md and
bandwidth-<dtype>.png under runs/<machine>/, which git ignores; `--out reports/<machine>` writes them
into the committed reports/ instead, to keep them.
"""
import argparse
import dataclasses
import glob
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy
import torch
from tqdm import tqdm

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from scripts.gpt import GPT2_SMALL, parameter_shapes
from scripts.plots import bandwidth_lines
from scripts.report import OUT_HELP, describe, machine, markdown_table, report_directory, write_csv, written

# Each dtype and list length is a recompilation of the compiled reference; dynamo's default limit of 8
# would fall back to eager silently and time that under the compiled label.
torch._dynamo.config.recompile_limit = 64
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
MAX_SETS = 64  # beyond this the small sizes time Python, not memory, however many sets rotate


class Unavailable(Exception):
    """This implementation cannot run this rule here; the message says why."""


@dataclass(frozen=True)
class Implementation:
    name: str
    needs_gpu: bool  # its times mean nothing off a GPU (Triton's interpreter)
    make: Callable  # (rule, params with grads) -> a step function; raises Unavailable


def ours(impl):
    def make(rule, params):
        optimizer = getattr(optim, rule.name)(params, impl=impl)
        return optimizer.step
    return make


def one_launch_per_tensor(rule, params):
    """The lion-pytorch pattern: a Python loop over the params, one kernel launch each."""
    optimizers = [getattr(optim, rule.name)([param], impl="triton") for param in params]

    def step():
        for optimizer in optimizers:
            optimizer.step()
    return step


_compiled_references = {}


def compiled_reference(rule, params):
    """torch.compile of the rule's reference, applied tensor by tensor: one compilation per rule with
    dynamic shapes serves every size (a compilation per size and dtype would take hours on a GPU run),
    on the state our optimizer made in one step."""
    optimizer = getattr(optim, rule.name)(params, impl="reference")
    optimizer.step()
    group = optimizer.param_groups[0]
    compiled = _compiled_references.setdefault(rule.name, torch.compile(rule.reference, dynamic=True))
    arguments = ([False],) if rule.has_first_step_states else ()
    tensors = [([p], [p.grad], [optimizer.state[p]]) for p in params]

    def step():
        for param, grad, state in tensors:
            compiled(param, grad, state, group, *arguments)
    return step


def torch_optim(switch):
    def make(rule, params):
        if rule.torch_twin is None:
            raise Unavailable(f"torch.optim has no {rule.name}")
        try:
            optimizer = rule.torch_twin(params, **{switch: True})
            optimizer.step()
        except TypeError:
            raise Unavailable(f"torch.optim.{rule.name} takes no {switch}=") from None
        except RuntimeError as error:
            raise Unavailable(f"torch.optim.{rule.name}({switch}=True): {str(error).splitlines()[0]}") from None
        return optimizer.step
    return make


def lion_pytorch(rule, params):
    if rule.name != "Lion":
        raise Unavailable("lion-pytorch has Lion only")
    try:
        from lion_pytorch import Lion
    except ImportError:
        raise Unavailable("lion-pytorch is not installed") from None
    return Lion(params, use_triton=True).step


IMPLEMENTATIONS = {impl.name: impl for impl in (
    Implementation("triton", True, ours("triton")),
    Implementation("one launch per tensor", True, one_launch_per_tensor),
    Implementation("reference", False, ours("reference")),
    Implementation("torch.compile(reference)", False, compiled_reference),
    Implementation("torch fused", False, torch_optim("fused")),
    Implementation("torch foreach", False, torch_optim("foreach")),
    Implementation("lion-pytorch", True, lion_pytorch),
)}
# Their names in the figures' legends, where the name alone does not say whose they are.
LEGEND = {"triton": "triton (ours, fused: one launch per step)",
          "one launch per tensor": "one launch per tensor (ours)",
          "reference": "reference (ours, torch ops)",
          "torch.compile(reference)": "torch.compile(reference) (ours)"}
# Without a GPU: what a CPU can time in under two minutes (torch.compile alone takes minutes).
CPU_IMPLEMENTATIONS = ("reference", "torch fused", "torch foreach")


def cache_bytes(device) -> int:
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 * 2**20
    sizes = []  # Linux lists each cache level of a CPU, "32768K"; elsewhere assume 32 MiB
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        text = open(path).read().strip()
        sizes.append(int(text.rstrip("KM")) * {"K": 2**10, "M": 2**20}.get(text[-1], 1))
    return max(sizes, default=32 * 2**20)


def time_ms(fn, device, rep_ms) -> tuple:
    """(median, 20 % quantile, 80 % quantile) of one call, in milliseconds."""
    if device.type == "cuda":
        import triton.testing
        return tuple(triton.testing.do_bench(fn, warmup=rep_ms / 4, rep=rep_ms, quantiles=[0.5, 0.2, 0.8]))
    from torch.utils.benchmark import Timer
    fn()  # warm-up
    timer = Timer(stmt="fn()", globals={"fn": fn})
    times = timer.blocked_autorange(min_run_time=rep_ms / 1e3).times
    while len(times) < 3:  # a step longer than rep_ms: still a median of three
        times += timer.timeit(number=1).times
    median, low, high = numpy.quantile(times, [0.5, 0.2, 0.8])
    return median * 1e3, low * 1e3, high * 1e3


def buffer_sets(rule, shapes, dtype, device) -> int:
    """How many sets of params, grads and state fill four times the last-level cache (2 to MAX_SETS)."""
    group = rule.defaults
    numels = [math.prod(s) for s in shapes]
    stored = 2 * sum(numels) * torch.empty((), dtype=dtype).element_size() + rule.state_bytes(group, numels, dtype)
    return max(2, min(MAX_SETS, math.ceil(4 * cache_bytes(device) / max(stored, 1))))


def make_params(rule, shapes, dtype, device, seed):
    generator = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in shapes:
        param = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        param = param.abs() if rule.nonnegative_params else param
        param.grad = torch.randn(shape, dtype=dtype, device=device, generator=generator) * 1e-3
        params.append(param)
    return params


def measure(rule, implementation, shapes, dtype, device, rep_ms):
    """Median step time over rotating buffer sets, or raises Unavailable."""
    steps = [implementation.make(rule, make_params(rule, shapes, dtype, device, seed))
             for seed in range(buffer_sets(rule, shapes, dtype, device))]
    rotation = itertools.cycle(steps)
    return time_ms(lambda: next(rotation)(), device, rep_ms)


def copy_bandwidth(device, numel, rep_ms) -> float:
    """GB/s of dst.copy_(src) on fp32 buffers: one read and one write per element."""
    sources = [torch.randn(numel, device=device) for _ in range(2)]
    destinations = [torch.empty_like(s) for s in sources]
    pairs = itertools.cycle(zip(destinations, sources))
    median, _, _ = time_ms(lambda: (lambda d, s: d.copy_(s))(*next(pairs)), device, rep_ms)
    return 2 * 4 * numel / (median * 1e-3) / 1e9


def row(rule, implementation, size_label, shapes, dtype, device, rep_ms, copy_gbps):
    group = rule.defaults
    numel = sum(math.prod(s) for s in shapes)
    moved = numel * rule.bytes_per_param(group, dtype)
    base = dict(rule=rule.name, dtype=DTYPE_NAMES[dtype], size=size_label, tensors=len(shapes), numel=numel,
                implementation=implementation.name, bytes_moved=moved, floor_ms=moved / copy_gbps / 1e6)
    try:
        median, low, high = measure(rule, implementation, shapes, dtype, device, rep_ms)
    except Unavailable as reason:
        return {**base, "status": str(reason)}
    gbps = moved / (median * 1e-3) / 1e9
    return {**base, "status": "measured", "median_ms": median, "p20_ms": low, "p80_ms": high, "gbps": gbps,
            "percent_of_copy": 100 * gbps / copy_gbps, "time_over_floor": median / (moved / copy_gbps / 1e6)}


def sweep(rules, dtypes, exponents, implementations, device, rep_ms, copy_gbps, gpt_shapes):
    """Every rule × dtype × size (and the GPT list) × implementation, as report rows."""
    cases = [(rule, dtype, f"2^{e}", [(2**e,)]) for rule in rules for dtype in dtypes if dtype in rule.dtypes
             for e in exponents]
    cases += [(rule, dtype, "GPT list", gpt_shapes) for rule in rules for dtype in dtypes if dtype in rule.dtypes]
    rows = []
    for rule, dtype, size_label, shapes in tqdm(cases, desc="bandwidth"):
        for implementation in implementations:
            rows.append(row(rule, implementation, size_label, shapes, dtype, device, rep_ms, copy_gbps))
            torch.cuda.empty_cache() if device.type == "cuda" else None
    return rows


def goals(rows) -> list:
    """The GPU goals, each met, not met, or not measured: said, not guessed."""
    measured = [r for r in rows if r["status"] == "measured"]

    def find(rule, implementation, size="GPT list"):
        return [r for r in measured if r["rule"] == rule and r["implementation"] == implementation and r["size"] == size]

    lines = []
    large = [r for r in measured if r["implementation"] == "triton" and r["size"] != "GPT list"
             and r["numel"] >= 2**26]
    if large:
        worst = min(large, key=lambda r: r["percent_of_copy"])
        verdict = "met" if worst["percent_of_copy"] >= 90 else "not met"
        lines.append(f"Every rule ≥ 90 % of copy bandwidth from 2^26 elements: {verdict} (lowest: {worst['rule']} "
                     f"{worst['dtype']} {worst['size']} at {worst['percent_of_copy']:.1f} %).")
    else:
        lines.append("Every rule ≥ 90 % of copy bandwidth from 2^26 elements: not measured (needs the triton "
                     "implementation on a GPU, at 2^26 elements or more).")
    gpt = [r for r in measured if r["implementation"] == "triton" and r["size"] == "GPT list"]
    if gpt:
        worst = max(gpt, key=lambda r: r["time_over_floor"])
        verdict = "met" if worst["time_over_floor"] <= 1.15 else "not met"
        lines.append(f"GPT list within 1.15× of its bytes floor: {verdict} (worst: {worst['rule']} {worst['dtype']} "
                     f"at {worst['time_over_floor']:.2f}×).")
    else:
        lines.append("GPT list within 1.15× of its bytes floor: not measured (needs the triton implementation on a GPU).")
    for rule, baseline in (("AdamW", "torch fused"), ("Lion", "one launch per tensor")):
        for ours_row in find(rule, "triton"):
            theirs = [r for r in find(rule, baseline) if r["dtype"] == ours_row["dtype"]]
            if theirs:
                ratio = theirs[0]["median_ms"] / ours_row["median_ms"]
                verdict = "met" if ratio > 1 else "not met"
                lines.append(f"{rule} faster than {baseline} on the GPT list, {ours_row['dtype']}: {verdict} "
                             f"({ours_row['median_ms']:.3f} ms against {theirs[0]['median_ms']:.3f} ms, {ratio:.2f}×).")
        if not find(rule, "triton"):
            lines.append(f"{rule} faster than {baseline} on the GPT list: not measured (needs a GPU).")
    return lines


def markdown(facts, rows, copy_gbps, gpt_name, skipped) -> str:
    measured = [r for r in rows if r["status"] == "measured"]
    number = lambda key, spec: lambda r: format(r[key], spec)  # noqa: E731
    lines = [f"# Bandwidth profile\n\nMeasured on {describe(facts)}.\n",
             f"Copy bandwidth (fp32 dst.copy_(src), read + write): **{copy_gbps:.1f} GB/s**, the ceiling below.\n",
             *(["On a CPU a copy's store first reads the destination's cache line (write-allocate), traffic the "
                "read + write count leaves out, while an update rule writes only lines it has just read: a rule's "
                "GB/s can pass the copy's there.\n"] if "CPU" in facts["machine"] else []),
             "## Goals\n", *[f"- {line}" for line in goals(rows)], "",
             f"## The GPT list: {gpt_name}\n",
             markdown_table([r for r in measured if r["size"] == "GPT list"], {
                 "rule": lambda r: r["rule"], "dtype": lambda r: r["dtype"],
                 "implementation": lambda r: r["implementation"], "median ms": number("median_ms", ".3f"),
                 "floor ms": number("floor_ms", ".3f"), "time / floor": number("time_over_floor", ".2f"),
                 "GB/s": number("gbps", ".1f"), "% of copy": number("percent_of_copy", ".1f")}),
             "\n## Single tensors\n",
             markdown_table([r for r in measured if r["size"] != "GPT list"], {
                 "rule": lambda r: r["rule"], "dtype": lambda r: r["dtype"], "elements": lambda r: r["size"],
                 "implementation": lambda r: r["implementation"], "median ms": number("median_ms", ".4f"),
                 "GB/s": number("gbps", ".1f"), "% of copy": number("percent_of_copy", ".1f")})]
    unavailable = {}
    for r in rows:
        if r["status"] != "measured":
            unavailable.setdefault(r["implementation"], dict.fromkeys([]))[r["status"]] = None
    if unavailable or skipped:
        lines.append("\n## Not measured here\n")
        lines += [f"- {name}: {reason}" for name, reason in skipped]
        lines += [f"- {name}: " + "; ".join(reasons) for name, reasons in unavailable.items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_gpu = torch.cuda.is_available()
    kernel_rules = [name for name, rule in RULES.items() if rule.has_kernel]  # a dense sweep of every element
    parser.add_argument("--rules", nargs="+", default=kernel_rules, choices=kernel_rules)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPE_NAMES.values()),
                        default=list(DTYPE_NAMES.values()) if on_gpu else ["fp32"],
                        help="default: every dtype on a GPU, fp32 on a CPU")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(range(12, 29, 2) if on_gpu else range(12, 21, 4)),
                        help="log2 of the single-tensor sizes (default: 12 … 28 on a GPU, 12 16 20 on a CPU)")
    parser.add_argument("--implementations", nargs="+", choices=list(IMPLEMENTATIONS),
                        help="default: all on a GPU; on a CPU those a CPU can time: " + ", ".join(CPU_IMPLEMENTATIONS))
    parser.add_argument("--gpt-width", type=int, default=GPT2_SMALL.width if on_gpu else 192,
                        help="width of the GPT-2 parameter list (default: 768, GPT-2 small, on a GPU; 192 on a CPU)")
    parser.add_argument("--rep-ms", type=float, default=100 if on_gpu else 20, help="time spent timing each case")
    parser.add_argument("--out", help=OUT_HELP)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if on_gpu else "cpu")
    facts = machine(device)
    names = args.implementations or (list(IMPLEMENTATIONS) if on_gpu else list(CPU_IMPLEMENTATIONS))
    skipped = []  # (implementation, why it is not measured): in the report and in the figures' legends
    if not on_gpu:
        skipped = [(name, "needs a GPU: here Triton runs under its CPU interpreter, whose times say nothing of a GPU")
                   for name, implementation in IMPLEMENTATIONS.items() if implementation.needs_gpu]
        names = [name for name in names if not IMPLEMENTATIONS[name].needs_gpu]
    reason = ("not asked for (--implementations)" if args.implementations else
              "not in a CPU run's defaults (torch.compile takes minutes here); --implementations adds it")
    skipped += [(name, reason) for name in IMPLEMENTATIONS if name not in names and name not in dict(skipped)]
    implementations = [IMPLEMENTATIONS[name] for name in names]
    facts["triton_interpreter"] = facts["triton_interpreter"] and any(i.needs_gpu for i in implementations)
    print(f"Bandwidth profile on {describe(facts)}")
    dtypes = [dtype for dtype, name in DTYPE_NAMES.items() if name in args.dtypes]
    config = dataclasses.replace(GPT2_SMALL, width=args.gpt_width)
    gpt_shapes = parameter_shapes(config)
    gpt_name = (f"GPT-2 small's {len(gpt_shapes)} tensors" + ("" if config == GPT2_SMALL else f" at width {config.width}")
                + f", {sum(math.prod(s) for s in gpt_shapes):,} params")
    copy_gbps = copy_bandwidth(device, 2**28 if on_gpu else 2**24, args.rep_ms)
    print(f"copy bandwidth: {copy_gbps:.1f} GB/s")
    rows = sweep([RULES[name] for name in args.rules], dtypes, args.sizes, implementations, device, args.rep_ms,
                 copy_gbps, gpt_shapes)
    rows = [{**r, "copy_gbps": copy_gbps} for r in rows]
    directory = report_directory(facts, args.out)
    write_csv(directory / "bandwidth.csv", facts, rows)
    text = markdown(facts, rows, copy_gbps, gpt_name, skipped)
    (directory / "bandwidth.md").write_text(text)
    notes = []
    if not on_gpu:
        notes.append("No GPU here: CPU times, of single tensors of " + ", ".join(f"2^{e}" for e in args.sizes)
                     + " elements (a GPU run's default: 2^12 … 2^28).")
    left_out = [name for name in DTYPE_NAMES.values() if name not in args.dtypes]
    if left_out:
        asked = args.dtypes != parser.get_default("dtypes")
        notes.append(", ".join(left_out) + ": not measured, " + ("not asked for (--dtypes)." if asked or on_gpu else
                                                                 "a CPU run's default is fp32; --dtypes adds them."))
    paths = bandwidth_lines(rows, copy_gbps, directory, facts, list(IMPLEMENTATIONS), skipped, notes, LEGEND)
    print(text)
    print(written(directory, ["bandwidth.csv", "bandwidth.md", *(p.name for p in paths)]))


if __name__ == "__main__":
    main()
