"""Muon on a GPU: our fused step and our Newton–Schulz kernels against torch.optim.Muon's, in one run
(issue 26 item 5; a stage of `./dev gpu`).

Two measurements, each a median of triton.testing.do_bench (its 0.2 and 0.8 quantiles beside it):

1. A whole step on GPT-2 small's matrices (wte, wpe, and per block c_attn, attn.c_proj, c_fc,
   mlp.c_proj: 50 matrices, 85M params): fo.Muon(impl="triton") against torch.optim.Muon, bf16 and
   fp32 params, the same gradients; the step includes the momentum, Newton–Schulz (torch's 5 steps, in
   bf16 as torch does) and the apply. With bf16 params also ours with 24-bit split masters
   (``master_weight_bits=24``: the apply reads and writes an int8 residual beside θ).
2. Newton–Schulz alone on one square matrix (Flash-Muon's comparison: 1024 to 8192): our kernels
   (``fusedoptim.kernels.newton_schulz``, half the tiles of each Gram product) against the oracle's
   matmuls (``fusedoptim.optim.reference.muon.newton_schulz``, torch's algorithm).

Run: `python -m scripts.muon_gpu` (--help for the options); writes muon_gpu.csv and muon_gpu.md under
runs/<machine>/, or --out. Without a CUDA GPU it says so and measures nothing (a CPU time of these
kernels would time the interpreter). ``measure`` takes the timer, so that the tests run its code on the
CPU with a plain clock.
"""
import argparse
import statistics
import sys
import time

import torch

from fusedoptim import optim
from fusedoptim.kernels.newton_schulz import newton_schulz
from fusedoptim.optim.reference.muon import newton_schulz as reference_newton_schulz
from scripts.report import OUT_HELP, describe, machine, markdown_table, report_directory, write_csv, written

GPT2_SMALL_MATRICES = [(50257, 768), (1024, 768)] + [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
SQUARE_SIDES = (1024, 2048, 4096, 8192)
COEFFICIENTS, STEPS, EPS = (3.4445, -4.7750, 2.0315), 5, 1e-7  # torch.optim.Muon's defaults


def bench(fn) -> tuple:
    """(median, 20th, 80th percentile) in ms, triton.testing.do_bench's."""
    import triton.testing

    return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))


def clock(fn, repeats: int = 3) -> tuple:
    """The same triple from a plain clock (the tests' timer on a CPU)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)


def step_rows(shapes, dtype, device, timer) -> list:
    """Our step and torch's on copies of the same matrices and gradients."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    base = [torch.randn(shape, generator=generator).to(device, dtype) for shape in shapes]
    grads = [torch.randn(shape, generator=generator).to(device, dtype) * 1e-2 for shape in shapes]
    rows = []
    makers = [("ours (triton)", lambda ps: optim.Muon(ps, impl="triton")),
              ("torch.optim.Muon", lambda ps: torch.optim.Muon(ps))]
    if dtype == torch.bfloat16:
        makers.insert(1, ("ours (triton), 24-bit masters", lambda ps: optim.Muon(ps, impl="triton", master_weight_bits=24)))
    for name, make in makers:
        params = [p.clone().requires_grad_() for p in base]
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        optimizer = make(params)
        optimizer.step()  # the state made, the kernels compiled
        median, low, high = timer(optimizer.step)
        rows.append(dict(measurement="step", implementation=name, shape=f"{len(shapes)} matrices",
                         dtype=str(dtype).removeprefix("torch."), median_ms=median, q20_ms=low, q80_ms=high))
    return rows


def newton_schulz_rows(side: int, device, timer) -> list:
    """Newton–Schulz alone on one side × side bf16 matrix: our kernels against the oracle's matmuls."""
    update = torch.randn(side, side, device=device, dtype=torch.bfloat16)
    stack, out = update[None].contiguous(), torch.empty(1, side, side, device=device, dtype=torch.bfloat16)
    rows = []
    for name, fn in (("ours (triton)", lambda: newton_schulz(stack, out, COEFFICIENTS, STEPS, EPS)),
                     ("torch matmuls", lambda: reference_newton_schulz(update, COEFFICIENTS, STEPS, EPS))):
        fn()
        median, low, high = timer(fn)
        rows.append(dict(measurement="newton_schulz", implementation=name, shape=f"{side} x {side}",
                         dtype="bfloat16", median_ms=median, q20_ms=low, q80_ms=high))
    return rows


def with_ratios(rows) -> list:
    """Each row's time over torch's on the same measurement, shape and dtype."""
    baselines = {(r["measurement"], r["shape"], r["dtype"]): r["median_ms"] for r in rows
                 if not r["implementation"].startswith("ours")}
    for r in rows:
        r["ratio_to_torch"] = r["median_ms"] / baselines[(r["measurement"], r["shape"], r["dtype"])]
    return rows


def measure(device, step_shapes, sides, dtypes, timer) -> list:
    rows = []
    for dtype in dtypes:
        rows += step_rows(step_shapes, dtype, device, timer)
    for side in sides:
        rows += newton_schulz_rows(side, device, timer)
    return with_ratios(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=list(SQUARE_SIDES))
    parser.add_argument("--out", help=OUT_HELP)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("muon_gpu: no CUDA GPU here, nothing measured (a CPU would time the Triton interpreter)")
        return 0
    device = torch.device("cuda")
    facts = machine(device)
    rows = measure(device, GPT2_SMALL_MATRICES, args.sides, (torch.bfloat16, torch.float32), bench)
    directory = report_directory(facts, args.out)
    write_csv(directory / "muon_gpu.csv", facts, rows)
    table = markdown_table(rows, {
        "measurement": lambda r: r["measurement"], "implementation": lambda r: r["implementation"],
        "shape": lambda r: r["shape"], "dtype": lambda r: r["dtype"],
        "median ms (q20–q80)": lambda r: f"{r['median_ms']:.3f} ({r['q20_ms']:.3f}–{r['q80_ms']:.3f})",
        "ratio to torch": lambda r: f"{r['ratio_to_torch']:.2f}"})
    (directory / "muon_gpu.md").write_text(f"# Muon on a GPU\n\nMeasured on {describe(facts)}.\n\n{table}\n")
    print(table)
    print(written(directory, ["muon_gpu.csv", "muon_gpu.md"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
