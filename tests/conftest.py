"""Shared test set-up: Triton runs on the GPU when there is one, else under the CPU interpreter."""
import inspect
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is first imported

import pytest  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow(seconds): takes about this many seconds on the 2-core CPU (what it "
                                       "spends them on: its docstring); -m 'not slow' leaves it out")


def assert_close(actual, expected, tolerance, what, allowed_mismatches=0):
    """allclose that says what differs: NaN/inf mismatches, the worst element, the first bad indices."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    nan_mismatch = torch.isnan(actual) != torch.isnan(expected)
    assert not nan_mismatch.any(), f"{what}: NaN at different places, first {nan_mismatch.nonzero()[:5].tolist()}"
    bad = ~torch.isclose(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
    if int(bad.sum()) > allowed_mismatches:
        error = (actual - expected).abs().nan_to_num()
        worst = error.flatten().argmax()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {actual.numel()} elements differ beyond atol={tolerance.atol}, "
            f"rtol={tolerance.rtol} ({allowed_mismatches} allowed); worst |diff| {error.max().item():.3e} "
            f"at flat index {worst.item()} ({actual.flatten()[worst].item()} vs {expected.flatten()[worst].item()}); "
            f"first bad indices {bad.nonzero()[:5].tolist()}")


def hyperparameters_for_tests(rule) -> dict:
    """The values each hyperparameter declares for the tests (its test_value, else its default)."""
    return {spec.name: spec.default if spec.test_value is None else spec.test_value for spec in rule.arguments}


def twin_options(rule, options: dict) -> dict:
    """Of ``options``, those the rule's torch twin takes too (not ``cautious``, which torch.optim has not)."""
    taken = inspect.signature(rule.torch_twin).parameters
    return {name: value for name, value in options.items() if name in taken}


def make_params(shapes, dtype, seed=0, rule=None):
    """Random params; non-negative for a rule that needs them so (EG)."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator).to(device=DEVICE, dtype=dtype) for shape in shapes]
    if rule is not None and rule.nonnegative_params:
        params = [p.abs() for p in params]
    return params


def random_grads(params, seed, rule=None):
    """Random gradients; sparse for a rule that takes sparse gradients only (SparseAdam): see as_gradient."""
    generator = torch.Generator().manual_seed(seed)
    return [as_gradient(rule, torch.randn(p.shape, generator=generator).to(device=p.device, dtype=p.dtype))
            for p in params]


def as_gradient(rule, grad):
    """``grad`` as ``rule`` takes it: unchanged, or for a rule of sparse gradients only a sparse COO
    tensor holding two entries of every three, so that every test also sees entries it must leave alone."""
    if rule is None or not rule.only_sparse_gradients:
        return grad
    absent = torch.arange(grad.numel(), device=grad.device).reshape(grad.shape) % 3 == 1
    held = ~absent
    return torch.sparse_coo_tensor(held.nonzero().t(), grad[held], grad.shape, check_invariants=True).coalesce()


def impls_of(rule, impls=("triton", "reference")) -> list:
    """Those of ``impls`` the rule has ("auto" always: it takes the reference where there is no kernel)."""
    return [impl for impl in impls if impl == "auto" or impl in rule.impls]


@pytest.fixture
def device():
    return DEVICE


def run_reproduction(module, tmp_path_factory, **knobs):
    """A reproduction's run() (scripts/reproductions/) into a fresh directory: its numbers, with that
    directory under "out"."""
    out = tmp_path_factory.mktemp(module.NAME)
    return {**module.run(out=out, **knobs), "out": out}


def by_rule_name(rules):
    """Parametrize a test over the declarations of one shape (``rule``), with each rule's name as its id."""
    return pytest.mark.parametrize("rule", rules, ids=lambda rule: rule.name)


def seeded_steps(rule, impl, shapes, steps, **options) -> tuple:
    """(params, optimizer) after ``steps`` steps of a shape's rule on seeded params of these shapes, each
    step with fresh seeded gradients: the run the shapes' suites compare impls and checkpoints on."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    optimizer = rule.optimizer(params, impl=impl, **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return params, optimizer
