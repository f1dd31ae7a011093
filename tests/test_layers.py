"""Layers import downward only, and each module keeps to its own rooms.

scripts/ and the tuning command (fusedoptim/tuner/) → fusedoptim/optim/ → fusedoptim/kernels/ →
fusedoptim/autotune/ (the launch-config lookup); an oracle imports nothing from the kernels it checks.
Nothing imports a top-level ``kernels``, ``optim`` or ``autotune``: those names belong to other
distributions (Hugging Face's ``kernels``, which transformers requires, among them). Read from the source
with ast, so a lazy import inside a function counts too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fusedoptim"


def python_files(folder: str) -> list:
    return sorted((ROOT / folder).rglob("*.py"))


def imported_modules(path: Path) -> set:
    """Every module a file imports, anywhere in it, as a dotted name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layers(path: Path) -> set:
    """The layers a file imports: ``fusedoptim.<layer>`` as that layer's name, other modules by their top."""
    found = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] == PACKAGE and len(parts) > 1:
            found.add(".".join(parts[:3]) if parts[1:3] == ["optim", "reference"] else ".".join(parts[:2]))
        else:
            found.add(parts[0])
    return found


OPTIM, KERNELS, AUTOTUNE, TUNER = (f"{PACKAGE}.{layer}" for layer in ("optim", "kernels", "autotune", "tuner"))
FORBIDDEN = [
    (f"{PACKAGE}/kernels", {OPTIM, f"{OPTIM}.reference", TUNER, "scripts"}),  # Triton math and the launcher
    (f"{PACKAGE}/optim", {TUNER, "scripts"}),  # the optimizers: below their tuner and the scripts
    (f"{PACKAGE}/optim/reference", {KERNELS}),  # the oracles check the kernels: they share nothing with them
    (f"{PACKAGE}/autotune", {OPTIM, f"{OPTIM}.reference", KERNELS, TUNER, "scripts"}),  # the lookup, lowest
]


@pytest.mark.parametrize("folder, forbidden", FORBIDDEN, ids=[folder for folder, _ in FORBIDDEN])
def test_layers_import_downward_only(folder, forbidden):
    files = python_files(folder)
    assert files, f"no Python file under {folder}"
    for path in files:
        wrong = layers(path) & forbidden
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}: a layer may import only below it"


@pytest.mark.parametrize("folder", [PACKAGE, "scripts", "tests"])
def test_nothing_imports_a_top_level_kernels_optim_or_autotune(folder):
    for path in python_files(folder):
        wrong = {name for name in imported_modules(path) if name.split(".")[0] in ("kernels", "optim", "autotune")}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}: the layers are fusedoptim.<layer>"
