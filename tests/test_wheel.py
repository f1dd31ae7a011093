"""The package as a user installs it: the wheel built from this checkout holds one top-level package,
``fusedoptim`` (a top-level ``kernels`` shadowed Hugging Face's, which transformers imports; ``optim``
and ``autotune`` are other distributions' names), and, installed in a fresh virtual environment and
imported from outside the checkout, it passes tests/test_transformers.py there, next to HF's own
``kernels``.

The fresh environment installs nothing but the wheel: torch, triton, transformers and pytest come from
this interpreter's site-packages, added to its sys.path as plain directories by a .pth file. Plain
directories, so that their own .pth files are not run: among them is this checkout's editable install
(``./dev`` installs it with ``pip install -e``), whose finder would import fusedoptim from the checkout.

Costs, in CPU time on the 2-core machine: building the wheel ~2 s; the fresh environment and the install
~2 s; tests/test_transformers.py in it ~25 s."""
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None or shutil.which("git") is None,
                                reason="building the wheel needs setuptools in this interpreter "
                                       "(pip wheel --no-build-isolation) and git (to list the checkout's files)")

# What the fresh environment runs: pytest on its arguments, counting the outcomes (a module skipped for
# want of transformers exits 0 too), then where the modules it imported came from, and the import errors
# of the names the wheel must not take.
PROBE = """
import collections, importlib, json, sys
import pytest

class Outcomes(collections.Counter):
    def pytest_collectreport(self, report):
        if not report.passed:
            self["collection " + report.outcome] += 1

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or not report.passed:
            self[report.outcome] += 1

outcomes = Outcomes()
code = pytest.main(sys.argv[1:], plugins=[outcomes])
import fusedoptim
found = {"exit_code": int(code), "outcomes": dict(outcomes), "fusedoptim": fusedoptim.__file__}
try:
    import kernels
    found["kernels"] = kernels.__file__
except ModuleNotFoundError:
    found["kernels"] = None
for name in ("optim", "autotune"):
    try:
        importlib.import_module(name)
        found[name] = "imported"
    except ModuleNotFoundError as error:
        found[name] = f"ModuleNotFoundError: {error}"
print("PROBE " + json.dumps(found))
"""


def run(command, **kwargs):
    """A subprocess that must succeed; its output is in the assertion message where it does not."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the checkout's files (tracked, and untracked ones git does not
    ignore: what a clone with these changes holds), so that the build's build/ and *.egg-info stay out of
    the checkout."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is still listed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(out), "-q"])
    (built,) = out.glob("fusedoptim-*.whl")
    return built


def test_wheel_holds_only_fusedoptim(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {name.split("/")[0] for name in names}
        (dist_info,) = {name for name in top_level if name.endswith(".dist-info")}
        declared = (archive.read(f"{dist_info}/top_level.txt").decode().split()
                    if f"{dist_info}/top_level.txt" in names else ["fusedoptim"])
    assert top_level - {dist_info} == {"fusedoptim"}, f"the wheel's top-level entries: {sorted(top_level)}"
    assert declared == ["fusedoptim"], f"{dist_info}/top_level.txt declares {declared}"


@pytest.mark.slow(30)
def test_installed_wheel_trains_with_hf_trainer_outside_the_checkout(wheel, tmp_path):
    pytest.importorskip("transformers", reason="tests/test_transformers.py needs transformers")
    venv = tmp_path / "venv"
    # Without a pip of its own (ensurepip would take 4 s): the pip that builds the wheel, found through the
    # .pth below, installs into the environment of the interpreter that runs it, the fresh one.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (purelib / "running_interpreter.pth").write_text("".join(f"{path}\n" for path in site.getsitepackages()))
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])

    # The test file and the conftest it imports, alone in a folder outside the checkout: nothing else of
    # the checkout is on sys.path (pytest puts the conftest's folder there, and the working directory).
    tests = tmp_path / "tests"
    tests.mkdir()
    for name in ("conftest.py", "test_transformers.py"):
        shutil.copy2(TESTS / name, tests / name)
    (tests / "pytest.ini").write_text("[pytest]\n")  # so that no configuration above tmp_path is read
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([python, "-c", PROBE, "-q", "-p", "no:cacheprovider", "--rootdir", str(tests),
                           "-c", str(tests / "pytest.ini"), str(tests / "test_transformers.py")],
                          cwd=tests, env={**env, "PYTHONNOUSERSITE": "1"}, capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    probes = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and probes, f"the fresh environment's run failed:\n{output[-6000:]}"
    found = json.loads(probes[-1].removeprefix("PROBE "))
    assert found["exit_code"] == 0 and set(found["outcomes"]) == {"passed"}, (
        f"tests/test_transformers.py in the fresh environment: {found['outcomes']}\n{output[-6000:]}")
    assert Path(found["fusedoptim"]).is_relative_to(purelib), (
        f"fusedoptim was imported from {found['fusedoptim']}, not from the wheel installed in {purelib}")
    if importlib.util.find_spec("kernels") is not None:
        assert found["kernels"] is not None and not Path(found["kernels"]).is_relative_to(purelib), (
            f"`import kernels` in the fresh environment gave {found['kernels']}, not Hugging Face's")
    for name in ("optim", "autotune"):
        assert found[name].startswith("ModuleNotFoundError"), f"`import {name}` in the fresh environment: {found[name]}"
