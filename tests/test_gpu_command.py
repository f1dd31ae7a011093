"""`./dev gpu` (scripts/gpu.py): without a GPU it lists its stages and where it would write, and writes
nothing; it says that it writes into the checkout, to be committed (the one command that does by default);
its budgets fit in 8 minutes; its runner records passed, failed, timed-out and skipped stages (fake
stages, no GPU needed)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import gpu

ROOT = Path(__file__).resolve().parent.parent


def test_without_a_gpu_it_lists_every_stage_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "scripts.gpu", "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No GPU is available" in result.stdout
    for stage in gpu.STAGES:
        assert gpu.shown(stage.command, out) in result.stdout, stage.name
        assert f"{stage.name}, {stage.budget_s} s" in result.stdout
    assert f"It writes {out}/ (logs, reports, summary.md) and fusedoptim/autotune/tables/<gpu>.json, to be committed" \
        in result.stdout
    assert not out.exists()


def test_its_help_says_it_writes_reports_to_be_committed(capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "reports/<gpu>/" in text and "fusedoptim/autotune/tables/<gpu>.json" in text, text
    assert "to be committed" in text and "runs/" in text, "says it differs from the commands that write to runs/"


def test_the_budgets_fit_in_eight_minutes():
    assert sum(stage.budget_s for stage in gpu.STAGES) < 480
    assert all(stage.budget_s > gpu.GRACE_S for stage in gpu.STAGES)


def test_the_runner_records_each_stage_and_writes_the_summary(tmp_path, monkeypatch):
    python = ["python", "-c"]
    stages = [
        gpu.Stage("tests", [*python, "import os; print('interpreter', os.environ.get('TRITON_INTERPRET')); "
                                     "print('=== short test summary info ==='); print('3 passed in 0.1s')"], 20),
        gpu.Stage("fails", [*python, "import sys; sys.exit(3)"], 20),
        gpu.Stage("slow", [*python, "import time; print('{out}', flush=True); time.sleep(60)"], 3),
        gpu.Stage("absent", [*python, "print(1)"], 20, lambda: "not here"),
    ]
    monkeypatch.setattr(gpu, "STAGES", stages)
    monkeypatch.setattr(gpu, "GRACE_S", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "machine", lambda device: dict(machine="Fake GPU", torch="t", triton="x", date="d"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu.main(["--out", str(tmp_path)]) == 1
    text = (tmp_path / "summary.md").read_text()
    assert "| tests | passed |" in text and "| fails | failed (rc 3) |" in text
    assert "| slow | timed out (3 s) |" in text and "| absent | skipped: not here |" in text
    assert "3 passed in 0.1s" in text and "gpu-tests.log" in text
    assert "interpreter None" in (tmp_path / "gpu-tests.log").read_text()
    assert str(tmp_path) in (tmp_path / "gpu-slow.log").read_text()
    assert not (tmp_path / "gpu-absent.log").exists()
