"""Non-finite inputs: every rule's kernel against its oracle, and both against torch's twin where one
exists, with ±inf, NaN, ±1e38 and denormal gradients, infinite params, eps = 0 and extreme lrs.

The semantics (docs/rules.md, "Non-finite inputs"): a rule with a torch.optim twin does what the twin
does, operation for operation; any other rule lets NaN through to θ (the update of a NaN gradient is
NaN, not 0), except a rule with a NaN guard (one that counts ``nan_skips``: Tiger), which keeps NaN
out of θ. Three steps: the second and third read states that hold inf and NaN.
"""
import contextlib
import inspect
import math
from unittest import mock

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from tests.conftest import assert_close, hyperparameters_for_tests, make_params, random_grads

# The interpreter's numpy warns of every overflow and invalid operation: here they are the point.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SIZE = 31  # odd, one block: each odd value has ordinary neighbours
STEPS = 3
# Odd gradient values, at the same positions at every step (so states hold them from the second step).
GRAD_VALUES = {1: math.inf, 4: -math.inf, 7: math.nan, 10: 1e38, 13: -1e38, 16: 1e-40, 19: -1e-40}
# Odd param values, where the gradient is ordinary (and at 28 where it is NaN too).
PARAM_VALUES = {22: math.inf, 25: -math.inf, 28: math.inf}
GRAD_VALUES_WITH_ODD_PARAMS = {28: math.nan}
# Extreme settings, by hyperparameter name (a rule takes those whose names it all has and whose values
# its own checks accept): no weight
# decay (where 0·θ must not make NaN of an infinite θ), no momentum (RMSprop's other path), no eps
# (0/0 and g/0), an lr that overflows the update (η·g before the division, in torch's order: with and
# without momentum) and one that underflows it. A non-finite hyperparameter (Adagrad's lr_decay at inf,
# which torch steps to NaN) is refused at construction: tests/test_bad_input.py.
EXTREMES = ({"weight_decay": 0.0}, {"momentum": 0.0}, {"eps": 0.0}, {"lr": 1e30}, {"lr": 1e30, "momentum": 0.0},
            {"lr": 1e-30})


def variants(rule):
    """The rule's test hyperparameters, each boolean option switched, and each extreme setting."""
    base = hyperparameters_for_tests(rule)
    yield "test-values", base
    for spec in rule.arguments:
        if isinstance(spec.default, bool):
            yield f"{spec.name}={not spec.default}", {**base, spec.name: not spec.default}
        for value in spec.test_variants:  # the row's own variants (EGStepSize's bounds, Tiger's k)
            yield f"{spec.name}={value}", {**base, spec.name: value}
    checks = {spec.name: spec.check for spec in rule.arguments}
    for extreme in EXTREMES:
        # those its checks accept: Schedule-Free's momentum must be > 0 (eval() divides by it)
        if extreme.keys() <= base.keys() and not any(checks[name](value, {**base, **extreme})
                                                     for name, value in extreme.items()):
            yield "-".join(f"{name}={value}" for name, value in extreme.items()), {**base, **extreme}


# Dense gradients, crafted: the rules that take them.
CASES = [pytest.param(rule, hyper, id=f"{rule.name}-{variant}") for rule in RULES.values()
         if not rule.only_sparse_gradients for variant, hyper in variants(rule)]


def odd_param(rule):
    param = make_params([(SIZE,)], torch.float32, rule=rule)[0]
    for position, value in PARAM_VALUES.items():
        param[position] = value
    return param.abs() if rule.nonnegative_params else param  # EG's params stay >= 0: +inf only


def odd_grads(param):
    grads = []
    for step in range(STEPS):
        grad = random_grads([param], seed=step)[0]
        for position, value in {**GRAD_VALUES, **GRAD_VALUES_WITH_ODD_PARAMS}.items():
            grad[position] = value
        grads.append(grad)
    return grads


def run(make_optimizer, rule):
    param = odd_param(rule)
    optimizer = make_optimizer([param])
    for grad in odd_grads(param):
        param.grad = grad
        optimizer.step()
    return param, optimizer.state[param]


def assert_same(rule, param, state, other_param, other_state, what):
    tolerance = rule.tolerances[torch.float32]
    assert_close(param, other_param, tolerance, f"{what}: param")
    assert_infinities_equal(param, other_param, f"{what}: param")
    assert state.keys() == other_state.keys(), f"{what}: state names {list(state)} vs {list(other_state)}"
    for name in state:
        assert_close(state[name], other_state[name], tolerance, f"{what}: state {name}")
        assert_infinities_equal(state[name], other_state[name], f"{what}: state {name}")


def assert_infinities_equal(actual, expected, what):
    """assert_close lets an inf pass against a value within tolerance of it; there is none, but say it."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    differ = torch.isinf(actual) != torch.isinf(expected)
    assert not differ.any(), f"{what}: inf at different places, first {differ.nonzero()[:5].tolist()}"


# torch's sign(NaN) is 0 on the CPU and NaN on CUDA, so its Rprop, which steps by sign(g) and compares
# sign(g·g_prev), treats a NaN gradient differently on each: on the CPU θ stays where g is NaN (or where
# an infinite g meets g_prev = 0). Ours takes CUDA's (NaN propagates, as every other rule here), so on
# the CPU torch's twin runs with a sign that keeps NaN, CUDA's semantics; on a GPU it runs as it is.
CUDA_SIGN_OF_NAN = {"Rprop"}


def cuda_sign_of_nan(rule, device):
    """torch.Tensor.sign keeping NaN, for a rule in CUDA_SIGN_OF_NAN on the CPU; else nothing."""
    if rule.name not in CUDA_SIGN_OF_NAN or device.type != "cpu":
        return contextlib.nullcontext()
    sign = torch.Tensor.sign
    return mock.patch.object(torch.Tensor, "sign", lambda self: torch.where(self.isnan(), self, sign(self)))


@pytest.mark.parametrize("rule, hyper", CASES)
def test_kernel_equals_oracle_equals_torch(rule, hyper):
    param, state = run(lambda params: getattr(optim, rule.name)(params, **hyper, impl="triton"), rule)
    ref_param, ref_state = run(lambda params: getattr(optim, rule.name)(params, **hyper, impl="reference"), rule)
    assert_same(rule, param, state, ref_param, ref_state, f"{rule.name} kernel vs oracle")
    # torch's twin, where it has every option (not caution, which tests/test_cautious.py checks)
    if rule.torch_twin is not None and hyper.keys() <= inspect.signature(rule.torch_twin).parameters.keys():
        # foreach=False: torch's single-tensor loop on every device, whose order of operations the
        # oracle follows (on CUDA torch would pick its foreach kernels).
        with cuda_sign_of_nan(rule, param.device):
            twin_param, twin_state = run(lambda params: rule.torch_twin(params, **hyper, foreach=False), rule)
        assert_same(rule, ref_param, ref_state, twin_param, twin_state, f"{rule.name} oracle vs torch")
        assert_same(rule, param, state, twin_param, twin_state, f"{rule.name} kernel vs torch")


@pytest.mark.parametrize("rule, hyper", CASES)
def test_a_nan_gradient_makes_a_nan_param_unless_the_rule_guards(rule, hyper):
    """The oracle's semantics (the kernel equals it above): where a gradient is NaN, θ is NaN after
    the step; a rule with a NaN guard keeps every NaN out of θ instead."""
    for impl in ("triton", "reference"):
        param, _ = run(lambda params: getattr(optim, rule.name)(params, **hyper, impl=impl), rule)
        nan_gradient = torch.zeros(SIZE, dtype=torch.bool)
        nan_gradient[[p for p, v in {**GRAD_VALUES, **GRAD_VALUES_WITH_ODD_PARAMS}.items() if math.isnan(v)]] = True
        if "nan_skips" in rule.counters:
            assert not param.isnan().any(), f"{rule.name} ({impl}): the NaN guard let NaN into θ"
        else:
            assert param.cpu()[nan_gradient].isnan().all(), f"{rule.name} ({impl}): a NaN gradient left θ a number"
