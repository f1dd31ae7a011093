"""Layers import downward only, and each module keeps to its own rooms.

scripts/ and the tuning command (fusedoptim/tuner/) → fusedoptim/optim/ → fusedoptim/kernels/ →
fusedoptim/autotune/ (the launch-config lookup); an oracle imports nothing from the kernels it checks.
Nothing imports a top-level ``kernels``, ``optim`` or ``autotune``: those names belong to other
distributions (Hugging Face's ``kernels``, which transformers requires, among them). Read from the source
with ast, so a lazy import inside a function counts too. No module, script or test reads another's
private names (``_x``): it uses the other's public interface (the optimizer's runtime, the launcher's
chunk_map, the autotune lookup's device_table); only other projects' private names that this code must
read are allowed, each with its reason."""
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


def foreign_private_names(path: Path) -> list:
    """(line, name) of each private name the file takes from another module or object: ``from m import
    _x``, or ``obj._x`` where obj is not ``self``/``cls`` (a module's own ``_x`` it reads bare)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found += [(node.lineno, alias.name) for alias in node.names if is_private(alias.name)]
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append((node.lineno, node.attr))
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# Private names of other projects that this code must read, each with its reason.
OTHER_PROJECTS = {
    "_dynamo": "torch._dynamo is torch's compile namespace: reset(), config, testing.CompileCounter",
    "_foreach_copy_": "torch._foreach_* are torch's multi-tensor ops, one kernel for a list (shards' sums)",
    "_foreach_add_": "see _foreach_copy_ (Adafactor's plan: the statistics of every matrix in one op)",
    "_foreach_lerp_": "see _foreach_copy_ (Adafactor's plan: the running means of every matrix in one op)",
    "_replace": "namedtuple's _replace is its public API (the underscore only avoids field names)",
    "_execution_engine": "autograd's engine: queue_callback runs a callback when the backward ends",
    "_C": "torch._C._current_autograd_node: whether a backward runs inside another's node",
    "_current_autograd_node": "see _C: the node being run, None outside a nested backward",
    "_NormBase": "torch.nn.modules.batchnorm._NormBase: the base of every BatchNorm/InstanceNorm",
    "_scale": "GradScaler's scale tensor, which a captured step must read on the device",
    "_exit": "os._exit: a distributed test worker leaves without the interpreter teardown that aborted it",
    "_base": "a tensor's _base: the tensor a view shares its storage with",
}


@pytest.mark.parametrize("folder", [PACKAGE, "scripts", "tests"])
def test_no_module_touches_another_modules_private_names(folder):
    problems = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in python_files(folder)
                for line, name in foreign_private_names(path) if name not in OTHER_PROJECTS]
    assert not problems, "private names used from outside their module:\n" + "\n".join(problems)
