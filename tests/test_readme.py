"""The README's examples run as written: every ```python block of README.md, in the README's order, in
one namespace (as a reader pasting them one after the other into one session), starting from nothing:
each name a block uses (``torch``, ``fusedoptim``, a ``model``) is imported or defined by it or by a
block above it. They run in an empty working directory, on this machine (the CPU under the Triton
interpreter without a GPU), so an example stays small enough to run here in a few seconds.

A traceback points into README.md at the line that failed."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_BLOCK = re.compile(r"^```python[^\S\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list:
    """(the README line of the block's first line of code, its code) for each ```python block."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in PYTHON_BLOCK.finditer(text)]


def test_python_blocks_are_found():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x\n")]


def test_readme_python_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block: is an example's fence spelt otherwise (```py)?"
    namespace = {"__name__": "__readme__"}
    for line, code in blocks:
        # Padded so that the code sits at its own line numbers: a traceback names README.md's line.
        compiled = compile("\n" * (line - 1) + code, str(README), "exec")
        try:
            exec(compiled, namespace)
        except Exception as error:
            pytest.fail(f"README.md's python block at line {line} raised {type(error).__name__}: {error}\n"
                        f"(the blocks run in order in one namespace that starts empty: every name a block uses "
                        f"must be imported or defined in it or a block above)\n{code}")
