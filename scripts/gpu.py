"""Everything a GPU must show, in one command under 8 minutes: `./dev gpu` (or `python -m scripts.gpu`).

On a CUDA device, each stage below runs in turn as a subprocess without TRITON_INTERPRET, with its own
time budget (at the end of it the stage gets Ctrl-C, so pytest still prints its summary, then a kill),
its output in gpu-<stage>.log under the report directory; a stage that fails or runs out of time is
recorded and the next one runs. At the end summary.md is written there and printed: the GPU, torch
and triton versions, each stage's status and wall time, pytest's summary, the paths written.

  1. tests          the GPU-relevant test files on the device (the CUDA-graph capture and replay included)
  2. step-overhead  wall time per step on GPT-2 small's list: ours eager, compiled and graph-captured
                    against torch's AdamW (scripts/step_overhead.py)
  3. bandwidth      every rule at 2^26 elements and on GPT-2 small's list: ours fused and one launch
                    per tensor against torch's fused and foreach steps
  4. muon           fo.Muon's step and its Newton–Schulz kernels against torch.optim.Muon's
                    (scripts/muon_gpu.py: GPT-2 small's matrices; square matrices of 1024 to 8192)
  5. autotune       a short tuning pass, merged into fusedoptim/autotune/tables/<gpu>.json; each candidate is one
                    compilation per rule and dtype (72), about 0.3 s each: three rules in bf16 fit
  6. communication  DDP's fp32 all-reduce against the majority vote, on 2 GPUs (skipped on one)

Unlike the other commands (which write under runs/, untracked, unless given --out), it writes into the
checkout, to be committed: the logs, reports and summary.md in reports/<gpu>/ (--out for another folder)
and the tuned table in fusedoptim/autotune/tables/<gpu>.json. What a GPU shows is kept: the GPU machines
are lent for minutes, and the CPU runs cannot measure it.

Without a GPU it says so, lists what it would run (each command and its budget) and writes nothing.
"""
import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from scripts.report import REPORTS, machine, report_directory, slug

ROOT = Path(__file__).resolve().parent.parent
TOTAL_S = 480  # the promise: every stage's budget together stays under 8 minutes
GRACE_S = 10  # of a stage's budget: the time between Ctrl-C and the kill
TEST_FILES = ["tests/test_cuda_graphs.py", "tests/test_parity.py", "tests/test_quantized_state.py",
              "tests/test_master_weights.py", "tests/test_stochastic_rounding.py", "tests/test_torch_twins.py", "tests/test_amp.py",
              "tests/test_compile.py", "tests/test_launcher.py", "tests/test_tiger.py", "tests/test_behaviour.py",
              "tests/test_bad_input.py", "tests/test_step_plan.py"]


def two_gpus() -> Optional[str]:
    count = torch.cuda.device_count()
    return None if count >= 2 else f"needs 2 GPUs, this machine has {count}"


@dataclass(frozen=True)
class Stage:
    name: str
    command: list  # "python" is this interpreter, "{out}" the report directory
    budget_s: int
    condition: Callable[[], Optional[str]] = lambda: None  # why the stage is skipped, or None to run it


STAGES = [
    Stage("tests", ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10",
                    *TEST_FILES], 190),
    Stage("step-overhead", ["python", "-m", "scripts.step_overhead", "--out", "{out}"], 60),
    Stage("bandwidth", ["python", "-m", "scripts.bandwidth", "--sizes", "26", "--dtypes", "fp32", "bf16",
                        "--implementations", "triton", "one launch per tensor", "torch fused", "torch foreach",
                        "--rep-ms", "20", "--out", "{out}"], 70),
    Stage("muon", ["python", "-m", "scripts.muon_gpu", "--out", "{out}"], 35),
    Stage("autotune", ["python", "-m", "fusedoptim.tuner", "--rules", "AdamW", "Lion", "Tiger", "--dtypes", "bfloat16",
                       "--buckets", "22", "26", "--warmup-ms", "2", "--rep-ms", "5"], 90),
    Stage("communication", ["python", "-m", "scripts.communication", "--workers", "2", "--steps", "3",
                            "--out", "{out}"], 30, two_gpus),
]


def argv(command: list, out) -> list:
    return [sys.executable if part == "python" else part.format(out=out) for part in command]


def shown(command: list, out) -> str:
    return shlex.join(part.format(out=out) for part in command)


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def signal_group(process: subprocess.Popen, number: int) -> None:
    """The stage and every process it started (its own session), unless all have exited already."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, number)


def run(stage: Stage, directory: Path, env: dict) -> dict:
    """Runs one stage into its log; its status, wall time and log path."""
    reason = stage.condition()
    if reason is not None:
        return dict(status=f"skipped: {reason}", wall_s=0.0, log=None)
    log = directory / f"gpu-{stage.name}.log"
    start = time.monotonic()
    with open(log, "w") as file:
        file.write(f"$ {shown(stage.command, directory)}\n")
        file.flush()
        process = subprocess.Popen(argv(stage.command, directory), cwd=ROOT, env=env, stdout=file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = process.wait(timeout=stage.budget_s - GRACE_S)
            status = "passed" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGINT)  # pytest prints what it has so far
            try:
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                signal_group(process, signal.SIGKILL)
                process.wait()
            status = f"timed out ({stage.budget_s} s)"
    return dict(status=status, wall_s=time.monotonic() - start, log=log)


def pytest_summary(log: Optional[Path]) -> str:
    """From pytest's slowest-durations block (or its short summary) to the end, else its last lines."""
    if log is None or not log.exists():
        return "(pytest did not run)"
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("=") and ("slowest" in line or "short test" in line)]
    return "\n".join(lines[starts[0] if starts else -5:][-40:])


def summary(facts: dict, results: dict, directory: Path, started: float) -> str:
    total = sum(result["wall_s"] for result in results.values())
    lines = [f"# GPU check: {facts['machine']}", "",
             f"torch {facts['torch']}, triton {facts['triton']}, {facts['date']}, "
             f"{torch.cuda.device_count()} CUDA device(s); {total:.0f} s of stages (`./dev gpu`)", "",
             "| stage | status | wall | budget | log |", "|---|---|---|---|---|"]
    for stage in STAGES:
        result = results[stage.name]
        log = result["log"].name if result["log"] else ""
        lines.append(f"| {stage.name} | {result['status']} | {result['wall_s']:.0f} s | {stage.budget_s} s | {log} |")
    lines += ["", "## pytest", "", "```", pytest_summary(results["tests"]["log"]), "```", "", "## Written", ""]
    written = [path for folder in (directory, ROOT / "fusedoptim" / "autotune" / "tables") if folder.exists()
               for path in sorted(folder.iterdir()) if path.is_file() and path.stat().st_mtime >= started]
    lines += [f"- {relative(path)}" for path in [*written, directory / "summary.md"]]
    return "\n".join(lines) + "\n"


def plan(out) -> str:
    lines = []
    for number, stage in enumerate(STAGES, 1):
        reason = stage.condition()
        note = f"  (would be skipped: {reason})" if reason else ""
        lines.append(f"  {number}. {stage.name}, {stage.budget_s} s{note}:\n     {shown(stage.command, out)}")
    lines.append(f"  budgets together: {sum(s.budget_s for s in STAGES)} s (under {TOTAL_S} s)")
    return "\n".join(lines)


def main(args=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="report directory (default: reports/<gpu>/, to be committed: what a GPU "
                        "shows is kept)")
    parser.add_argument("--list", action="store_true", help="only list the stages, as without a GPU")
    options = parser.parse_args(args)
    if not torch.cuda.is_available() or options.list:
        if not torch.cuda.is_available():
            print("No GPU is available (torch.cuda.is_available() is False): nothing run, nothing written.")
        print("On a CUDA device `./dev gpu` runs, without TRITON_INTERPRET, each stage with its time budget:")
        out = options.out or "reports/<gpu>"
        print(plan(out))
        print(f"It writes {out}/ (logs, reports, summary.md) and fusedoptim/autotune/tables/<gpu>.json, to be committed.")
        return 0
    facts = machine(torch.device("cuda"))
    directory = report_directory(facts, options.out or REPORTS / slug(facts)).resolve()
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"  # a stage cut off by its budget still leaves its output in the log
    started, results = time.time(), {}
    print(f"GPU check on {facts['machine']}, torch {facts['torch']}, triton {facts['triton']}: logs in {directory}")
    for number, stage in enumerate(STAGES, 1):
        print(f"[{number}/{len(STAGES)}] {stage.name} ({stage.budget_s} s): {shown(stage.command, directory)}",
              flush=True)
        results[stage.name] = run(stage, directory, env)
        print(f"    {results[stage.name]['status']}, {results[stage.name]['wall_s']:.0f} s", flush=True)
    text = summary(facts, results, directory, started)
    (directory / "summary.md").write_text(text)
    print(text)
    ok = all(r["status"] == "passed" or r["status"].startswith("skipped") for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
