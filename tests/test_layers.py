"""Layers import downward only: scripts/ and the tuning command → optim/ → kernels/ → autotune/ (the
launch-config lookup); an oracle imports nothing from the kernels it checks. Read from the source
with ast, so a lazy import inside a function counts too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> set:
    """The top-level packages (and optim.reference) a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


FORBIDDEN = [
    ("kernels", {"optim", "scripts"}),  # Triton math, the launcher and the op
    ("optim/reference", {"kernels"}),  # the oracles check the kernels: they share nothing with them
    ("autotune", {"optim", "kernels", "scripts"}),  # the lookup below the kernels (not its command)
]


@pytest.mark.parametrize("folder, forbidden", FORBIDDEN, ids=[folder for folder, _ in FORBIDDEN])
def test_layers_import_downward_only(folder, forbidden):
    files = [path for path in (ROOT / folder).glob("*.py") if path.name != "__main__.py"]
    assert files, f"no Python file under {folder}"
    for path in files:
        wrong = imported_packages(path) & forbidden
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}: a layer may import only below it"
