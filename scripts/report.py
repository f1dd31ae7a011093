"""What the profiles share: the machine they ran on, and the CSV and markdown they write under reports/."""
import csv
import datetime
import os
import platform
import re
from pathlib import Path

import torch
import triton

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def machine(device: torch.device) -> dict:
    """The facts every row of a report carries: where and with what it was measured."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.machine()} ({os.cpu_count()} cores)"
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    return dict(machine=name, torch=torch.__version__, triton=triton.__version__,
                date=datetime.date.today().isoformat(), triton_interpreter=interpreted)


def report_directory(facts: dict, out=None) -> Path:
    """reports/<machine>/, e.g. reports/nvidia-h200/ or reports/cpu-x86_64/, unless ``out`` is given."""
    if out is not None:
        directory = Path(out)
    else:
        slug = re.sub(r"[^a-z0-9]+", "-", facts["machine"].lower().split(" (")[0]).strip("-")
        directory = REPORTS / slug
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_csv(path: Path, facts: dict, rows: list) -> None:
    """One row per measurement, each with the machine's facts in front."""
    rows = [{**facts, **row} for row in rows]
    columns = list(dict.fromkeys(key for row in rows for key in row))  # rows of several kinds: every column
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list, columns: dict) -> str:
    """``columns``: header -> function of a row giving the cell's text."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(row)) for cell in columns.values()) + " |" for row in rows]
    return "\n".join(lines)


def describe(facts: dict) -> str:
    where = f"{facts['machine']}, torch {facts['torch']}, triton {facts['triton']}, {facts['date']}"
    if facts["triton_interpreter"]:
        where += "; Triton kernels ran under the CPU interpreter (TRITON_INTERPRET=1)"
    return where
