"""Which declared requirements this interpreter lacks: `python -m scripts.requirements [peer...]`.

The declarations are pyproject.toml's: its dependencies are required (without one nothing runs: an
error, exit status 1), its extras' requirements and the peer libraries named on the command line (the
pins ./dev installs for tests/test_peers.py) are optional: where one is missing, the tests that need it
are skipped, each saying why. ./dev runs this after its set-up, so that a machine without a network (the
GPU machines) says once what it lacks and what is skipped, instead of failing on it. Nothing is printed
when everything is there. Standard library only: it runs before anything is known to be installed.
"""
import importlib.metadata
import operator
import os
import re
import sys
from pathlib import Path
from typing import Optional

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
PROJECT = "fusedoptim"
COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
               "!=": operator.ne}


def declared(text: str) -> dict:
    """{"dependencies": [...], <extra>: [...]}: the requirement strings of pyproject's [project]."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10 (requires-python allows it) has no tomllib
        return declared_by_pattern(text)
    project = tomllib.loads(text)["project"]
    return {"dependencies": project["dependencies"], **project.get("optional-dependencies", {})}


def declared_by_pattern(text: str) -> dict:
    """``declared`` without tomllib: the arrays of strings under [project] (its ``dependencies``) and
    [project.optional-dependencies], read by pattern (no comments inside an array); enough for this
    pyproject, tested against tomllib."""
    found, table = {}, None
    header, array = r"^\[([^\]\n]+)\]\s*$", r'^([\w-]+)\s*=\s*\[((?:\s|,|"[^"]*")*)\]'  # [table], key = ["...", ...]
    for match in re.finditer(f"{header}|{array}", text, re.M):
        if match.group(1) is not None:
            table = match.group(1).strip()
        elif table == "project.optional-dependencies" or (table == "project" and match.group(2) == "dependencies"):
            found[match.group(2)] = re.findall(r'"([^"]*)"', match.group(3))
    return found


def expanded(requirements: dict) -> dict:
    """Each extra's requirements with its references to the project's own extras
    (``fusedoptim[scripts]``) replaced by theirs."""
    def flatten(names):
        for requirement in names:
            own = re.fullmatch(rf"{PROJECT}\[([^\]]+)\]", requirement)
            if own:
                for extra in own.group(1).split(","):
                    yield from flatten(requirements[extra.strip()])
            else:
                yield requirement
    return {group: list(dict.fromkeys(flatten(names))) for group, names in requirements.items()}


def release(version: str) -> tuple:
    """2.11.0+cu128 -> (2, 11, 0): the release numbers, which are what the declared bounds compare."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def satisfies(version: str, specifier: str) -> bool:
    """``version`` within a specifier like ">=2.11,<2.14" (the operators pyproject uses)."""
    for clause in filter(None, (part.strip() for part in specifier.split(","))):
        symbol, bound = re.fullmatch(r"(>=|<=|==|!=|>|<)\s*(.+)", clause).groups()
        have, want = release(version), release(bound)
        width = max(len(have), len(want))
        if not COMPARISONS[symbol](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
            return False
    return True


def problem(requirement: str) -> Optional[str]:
    """None when the requirement is installed within its bounds; else what is wrong."""
    name, specifier = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", requirement).groups()
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    return None if satisfies(version, specifier) else f"{version} installed, outside the declared {specifier}"


def report(requirements: dict, peers: list, python: str) -> tuple:
    """(text, exit status): the requirements with a problem, nothing when there is none."""
    groups = expanded(requirements)
    lines, status = [], 0
    required = {r: problem(r) for r in groups.pop("dependencies")}
    for requirement, what in required.items():
        if what == "not installed":
            status = 1
            lines.append(f"error: {requirement} is required by {PROJECT} and is not installed for {python}. "
                         "./dev installs it where a package index is reachable; here, install it "
                         f"({python} -m pip install '{requirement}') or run ./dev with a python3 that has it.")
        elif what:
            lines.append(f"warning: {requirement}: {what}; the bounds are what has been tested, so results "
                         "here are untested: widen the bound in the commit that tests this version.")
    optional = {}
    for group, names in groups.items():  # a requirement of several extras is listed under the first
        for requirement in names:
            optional.setdefault(requirement, (f"the {group} extra", problem(requirement)))
    optional.update({r: ("a peer library of tests/test_peers.py", problem(r)) for r in peers})
    missing = [f"  {r}: {what} ({group})" for r, (group, what) in optional.items() if what]
    if missing:
        lines.append("Optional, not usable here: the tests that need them are skipped, each saying why "
                     "(pytest -ra lists them):")
        lines += missing
        lines.append(f"To add them where a network is reachable: {python} -m pip install <requirement> "
                     "(the peer libraries with --no-deps: theirs would pull a CUDA torch)")
    return "\n".join(lines), status


def main(argv=None) -> int:
    peers = sys.argv[1:] if argv is None else argv
    python = os.path.relpath(sys.executable)  # .venv/bin/python when ./dev runs it
    python = sys.executable if python.startswith("..") else python
    text, status = report(declared(PYPROJECT.read_text()), peers, python)
    if text:
        print(text, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
