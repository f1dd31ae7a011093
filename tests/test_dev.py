"""./dev's set-up and the front door: which .venv it makes for which python3 (its shell functions, called
from a shell that sources ./dev, which then only defines them), what scripts/requirements.py reports
missing, and where `./dev reproduce` writes unless told --out."""
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import report, requirements

ROOT = Path(__file__).resolve().parent.parent


def dev(call: str) -> subprocess.CompletedProcess:
    """Runs ``call`` in bash after sourcing ./dev."""
    result = subprocess.run(["bash", "-c", f"source ./dev && {call}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_an_interpreter_with_torch_is_shared_and_one_without_isolated(tmp_path):
    shared = dev(f"interpreter_site {sys.executable}").stdout.strip()
    torch_site = str(Path(torch.__file__).resolve().parent.parent)
    assert shared.startswith("import site; site.addsitedir(") and repr(torch_site) in shared, shared
    without_site_packages = tmp_path / "python"  # this interpreter with no site-packages, so no torch
    without_site_packages.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    without_site_packages.chmod(0o755)
    assert dev(f"interpreter_site {without_site_packages}").stdout.strip() == "isolated"


def test_the_venv_for_an_interpreter_with_torch_uses_its_packages_and_is_remade_when_it_changes(tmp_path):
    """What the GPU machines need: a venv made from python3 (a venv with torch) that imports python3's
    torch and that pip sees as installed, so it fetches none; a venv made for another answer is made again."""
    venv = tmp_path / "venv"
    dev(f"ensure_venv {sys.executable} {venv}")
    python = venv / "bin" / "python"
    seen = subprocess.run([python, "-c", "import importlib.metadata, torch; "
                           "print(torch.__file__); print(importlib.metadata.version('torch'))"],
                          capture_output=True, text=True, timeout=120)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == [torch.__file__, importlib.metadata.version("torch")]
    pip = subprocess.run([python, "-m", "pip", "show", "torch"], capture_output=True, text=True, timeout=120)
    assert pip.returncode == 0 and f"Version: {importlib.metadata.version('torch')}" in pip.stdout, pip.stderr
    (venv / "python3-site").write_text("isolated\n")  # as if made when python3 had no torch
    (venv / "left-over").touch()
    again = dev(f"ensure_venv {sys.executable} {venv}")
    assert "making" in again.stdout and not (venv / "left-over").exists(), again.stdout
    assert dev(f"recorded_site {venv}").stdout == dev(f"interpreter_site {sys.executable}").stdout
    unchanged = dev(f"ensure_venv {sys.executable} {venv}")
    assert unchanged.stdout == "", unchanged.stdout


def test_an_interpreter_without_ensurepip_still_gets_a_venv(tmp_path):
    """As a Debian python3 without python3-venv: `-m venv` fails unless --without-pip."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$*" in *--without-pip*) ;; *"-m venv"*) echo "ensurepip is not available" >&2; '
                      f'exit 1 ;; esac\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    made = dev(f"ensure_venv {python} {tmp_path / 'venv'}")
    assert "ensurepip is not available): making it without" in made.stdout, made.stdout + made.stderr
    imported = subprocess.run([tmp_path / "venv" / "bin" / "python", "-c", "import torch"], capture_output=True,
                              text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr


def test_the_pattern_reads_pyproject_as_tomllib_does():
    pytest.importorskip("tomllib", reason="Python 3.10: only the pattern reads pyproject there")
    text = (ROOT / "pyproject.toml").read_text()
    assert requirements.declared_by_pattern(text) == requirements.declared(text)
    assert {"dependencies", "scripts", "test"} <= set(requirements.declared(text))


def test_a_missing_dependency_is_an_error_and_a_missing_extra_is_listed_as_skipped():
    declared = {"dependencies": ["torch>=2.11", "fusedoptim-absent-dependency"],
                "scripts": ["numpy", "fusedoptim-absent-extra>=1"],
                "test": ["fusedoptim[scripts]", "pytest"]}
    text, status = requirements.report(declared, ["fusedoptim-absent-peer==1.0"], "py")
    assert status == 1
    assert "error: fusedoptim-absent-dependency is required by fusedoptim and is not installed for py" in text
    listed = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert listed == ["fusedoptim-absent-extra>=1: not installed (the scripts extra)",
                      "fusedoptim-absent-peer==1.0: not installed (a peer library of tests/test_peers.py)"], text
    outside, status = requirements.report({"dependencies": ["torch>=99"]}, [], "py")
    assert status == 0 and outside.startswith(f"warning: torch>=99: {torch.__version__} installed, outside"), outside
    assert requirements.report({"dependencies": ["torch>=2"]}, [], "py") == ("", 0)


def test_version_bounds_compare_release_numbers():
    assert requirements.satisfies("2.11.0+cu128", ">=2.11,<2.14")
    assert not requirements.satisfies("2.14.0", ">=2.11,<2.14")
    assert requirements.satisfies("0.3", "==0.3.0") and requirements.satisfies("65.5.0", ">=64")


def test_reproductions_write_where_git_does_not_track_by_default(capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")
    from scripts.reproductions import __main__ as reproductions, common

    directory = common.output_directory().resolve()
    assert directory.is_relative_to(report.RUNS) and not directory.is_relative_to(report.REPORTS), directory
    with pytest.raises(SystemExit):
        reproductions.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "runs/reproductions/" in text and "--out reports/reproductions" in text, text
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--", str(directory / "sign_family.png")])
    assert ignored.returncode == 0, f"git would track {directory.relative_to(ROOT)}: reproducing would dirty the checkout"


def test_the_requirements_command_says_nothing_is_missing_for_a_complete_interpreter():
    """This interpreter runs the suite, so it has every dependency: exit status 0."""
    result = subprocess.run([sys.executable, "-m", "scripts.requirements"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "error" not in result.stdout + result.stderr, result.stderr
