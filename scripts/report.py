"""What the profiles share: the machine they ran on, and the CSV and markdown they write.

A run writes under runs/<machine>/, which git ignores, so that running a profile leaves the checkout
as it was. Results worth keeping are committed deliberately: ``--out reports/<machine>`` writes them
into reports/, the committed folder (or copy the files there from runs/<machine>/)."""
import csv
import datetime
import os
import platform
import re
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"  # committed: results kept on purpose
RUNS = ROOT / "runs"  # in .gitignore: where a run writes unless it is given --out
OUT_HELP = ("report directory (default: runs/<machine>/, untracked; to keep a run's results, "
            "--out reports/<machine> writes them into the committed reports/)")


def machine(device: torch.device) -> dict:
    """The facts every row of a report carries: where and with what it was measured."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.machine()} ({os.cpu_count()} cores)"
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    return dict(machine=name, torch=torch.__version__, triton=triton.__version__,
                date=datetime.date.today().isoformat(), triton_interpreter=interpreted)


def slug(facts: dict) -> str:
    """The machine's folder name, e.g. nvidia-h200 or cpu-x86-64."""
    return re.sub(r"[^a-z0-9]+", "-", facts["machine"].lower().split(" (")[0]).strip("-")


def report_directory(facts: dict, out=None) -> Path:
    """runs/<machine>/ (untracked), e.g. runs/nvidia-h200/ or runs/cpu-x86-64/, unless ``out`` is given
    (``reports/<machine>`` to keep the results in the committed folder); made if missing."""
    directory = Path(out) if out is not None else RUNS / slug(facts)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def written(directory: Path, names) -> str:
    """The line a script ends with: where it wrote what, and, for the untracked default, how to keep it."""
    directory = Path(directory).resolve()
    shown = directory.relative_to(ROOT) if directory.is_relative_to(ROOT) else directory
    line = f"written to {shown}/: " + ", ".join(names)
    if directory.is_relative_to(RUNS):
        kept = Path(REPORTS.name) / directory.relative_to(RUNS)
        line += f"\n(untracked; to keep them, rerun with --out {kept} or copy them to {kept}/, and commit)"
    return line


def write_csv(path: Path, facts: dict, rows: list) -> None:
    """One row per measurement, each with the machine's facts in front."""
    rows = [{**facts, **row} for row in rows]
    columns = list(dict.fromkeys(key for row in rows for key in row))  # rows of several kinds: every column
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list, columns: dict) -> str:
    """``columns``: header -> function of a row giving the cell's text (a "|" in it escaped, so that it
    stays one cell: "|int8 − fp32|")."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(row)).replace("|", "\\|") for cell in columns.values()) + " |"
              for row in rows]
    return "\n".join(lines)


def describe(facts: dict) -> str:
    where = f"{facts['machine']}, torch {facts['torch']}, triton {facts['triton']}, {facts['date']}"
    if facts["triton_interpreter"]:
        where += "; Triton kernels ran under the CPU interpreter (TRITON_INTERPRET=1)"
    return where
