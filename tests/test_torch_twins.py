"""Rules that torch.optim also has must match it to fp32 rounding, for every option, in both impls,
and move checkpoints both ways. Twenty steps: long enough for amsgrad's running max to matter."""
import inspect
import io
import itertools

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from tests.conftest import assert_close, impls_of, make_params, random_grads

TWINS = [rule for rule in RULES.values() if rule.torch_twin is not None]
SHAPES = [(1029,), (3, 7, 11), (1,), (0,)]  # odd sizes, two chunks, one element, empty
STEPS = 20
# The values each option takes in the grid, by hyperparameter name (a rule takes those it has): every
# boolean both ways, and each coefficient off and on. Names not listed keep their default.
OPTION_VALUES = {
    "weight_decay": (0, 0.1), "momentum": (0, 0.9), "dampening": (0, 0.5), "lr_decay": (0, 0.1),
    "initial_accumulator_value": (0, 0.5), "betas": ((0.8, 0.95),), "lr": (3e-3,),
    # NAdam's ψ: at its default μ_t and μ_{t+1} differ by 7e-5 relative, too little to tell them apart
    "momentum_decay": (4e-3, 0.5),
    # ASGD's λ: at its default (1e-4, with lr 3e-3) η changes by 2e-7 relative a step, too little to
    # tell η_t from η_{t−1}; its t0: at the default 1e6 μ stays 1 and ax only copies θ, t0=3 averages
    "lambd": (0.5,), "t0": (1e6, 3),
}


def option_grid(rule):
    """Every combination of the rule's options over OPTION_VALUES (booleans: both ways), of those its
    twin has too (not ``cautious``, which torch.optim has not: tests/test_cautious.py checks it)."""
    twin_options = inspect.signature(rule.torch_twin).parameters
    names = [n for n, v in rule.defaults.items() if (isinstance(v, bool) or n in OPTION_VALUES) and n in twin_options]
    values = [(False, True) if isinstance(rule.defaults[n], bool) else OPTION_VALUES[n] for n in names]
    return [dict(zip(names, combination)) for combination in itertools.product(*values)]


def torch_accepts(rule, options):
    try:
        rule.torch_twin([torch.zeros(1)], **options)
        return True
    except ValueError:
        return False


def case_id(rule, impl, options):
    shown = (f"{k}={'tensor' if isinstance(v, torch.Tensor) else v}" for k, v in options.items()
             if k not in ("betas", "lr") or isinstance(v, torch.Tensor))
    return f"{rule.name}-{impl}-" + "-".join(shown)


def richest(rule):
    """The accepted combination with the most options away from their defaults."""
    accepted = [o for o in option_grid(rule) if torch_accepts(rule, o)]
    return max(accepted, key=lambda o: sum(o[n] != rule.defaults[n] for n in o))


CASES = [pytest.param(rule, impl, options, id=case_id(rule, impl, options))
         for rule in TWINS for impl in impls_of(rule)
         for options in option_grid(rule) + [{**richest(rule), "lr": torch.tensor(3e-3)}]
         if torch_accepts(rule, options)]
# Each number at the edges of its range, one at a time: torch refuses lr=0 and eps=0 in some twins
# (SparseAdam) and accepts them in others, and each of ours must refuse exactly what its twin refuses.
EDGE_VALUES = (0.0, -1.0)
REFUSED = [pytest.param(rule, options, id=case_id(rule, "both", options))
           for rule in TWINS for options in option_grid(rule) if not torch_accepts(rule, options)] + [
    pytest.param(rule, {name: value}, id=f"{rule.name}-both-{name}={value}") for rule in TWINS
    for name, default in rule.defaults.items() if isinstance(default, (int, float)) and not isinstance(default, bool)
    for value in EDGE_VALUES if not torch_accepts(rule, {name: value})]


def train(optimizer, params, steps, rule, first_step=0):
    """``steps`` steps of ours or of torch's twin, on the gradients ``rule`` takes (sparse for SparseAdam)."""
    for step in range(first_step, first_step + steps):
        for param, grad in zip(params, random_grads(params, seed=step, rule=rule)):
            param.grad = grad
        optimizer.step()


def saved_and_loaded(state_dict):
    """A checkpoint as users make one: through torch.save and torch.load, sharing no tensor with the
    optimizer it came from (torch's load_state_dict keeps the step tensor it is given)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def assert_same(params, optimizer, twin_params, twin, what):
    tolerance = optimizer.rule.tolerances[torch.float32]
    for i, (param, twin_param) in enumerate(zip(params, twin_params)):
        assert_close(param, twin_param, tolerance, f"{what}: param {i}")
        state, twin_state = optimizer.state[param], twin.state[twin_param]
        assert state.keys() == twin_state.keys(), f"{what}: state names {list(state)} vs torch's {list(twin_state)}"
        for name in state:  # torch's SparseAdam counts its step in a Python int
            assert_close(state[name], torch.as_tensor(twin_state[name]), tolerance, f"{what}: state {name} of param {i}")


@pytest.mark.parametrize("rule, impl, options", CASES)
def test_matches_torch_optim(rule, impl, options):
    params, twin_params = make_params(SHAPES, torch.float32), make_params(SHAPES, torch.float32)
    ours = getattr(optim, rule.name)(params, **options, impl=impl)
    twin_options = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    twin = rule.torch_twin(twin_params, **twin_options)
    train(ours, params, STEPS, rule)
    train(twin, twin_params, STEPS, rule)
    assert_same(params, ours, twin_params, twin, f"{rule.name} ({impl}) vs torch.optim.{rule.name}")


@pytest.mark.parametrize("rule, options", REFUSED)
def test_what_torch_refuses_we_refuse(rule, options):
    with pytest.raises(ValueError):
        getattr(optim, rule.name)([torch.zeros(1)], **options)


@pytest.mark.parametrize("rule", TWINS, ids=[r.name for r in TWINS])
def test_defaults_are_torchs(rule):
    twin = rule.torch_twin([torch.zeros(1)])
    ours = getattr(optim, rule.name)([torch.zeros(1)])
    # torch's every default is ours; ours beyond torch's are the flags torch lacks (cautious), off by default
    for name, value in twin.defaults.items():
        if name in ours.defaults:
            assert ours.defaults[name] == value, f"{rule.name}.{name}: ours {ours.defaults[name]}, torch's {value}"
    extra = {name: value for name, value in ours.defaults.items() if name not in twin.defaults}
    assert all(value is False for value in extra.values()), f"{rule.name}: options torch lacks, not off: {extra}"


@pytest.mark.parametrize("rule, impl", [pytest.param(rule, impl, id=f"{rule.name}-{impl}") for rule in TWINS
                                        for impl in impls_of(rule)])
def test_torch_checkpoint_loads_into_ours_and_back(rule, impl):
    """A torch.optim checkpoint continues in ours exactly as in torch, and ours continues in torch."""
    options = richest(rule)
    twin_params = make_params(SHAPES, torch.float32)
    twin = rule.torch_twin(twin_params, **options)
    train(twin, twin_params, 5, rule)
    checkpoint = saved_and_loaded(twin.state_dict())

    params = [p.detach().clone() for p in twin_params]
    ours = getattr(optim, rule.name)(params, **options, impl=impl)
    ours.load_state_dict(checkpoint)
    train(ours, params, 5, rule, first_step=5)
    train(twin, twin_params, 5, rule, first_step=5)
    assert_same(params, ours, twin_params, twin, f"torch.optim.{rule.name} checkpoint continued in ours ({impl})")

    back_params = [p.detach().clone() for p in params]
    back = rule.torch_twin(back_params, **options)
    back.load_state_dict(saved_and_loaded(ours.state_dict()))
    train(back, back_params, 5, rule, first_step=10)
    train(ours, params, 5, rule, first_step=10)
    assert_same(params, ours, back_params, back, f"our {rule.name} checkpoint continued in torch.optim ({impl})")


@pytest.mark.parametrize("rule", TWINS, ids=[r.name for r in TWINS])
def test_float64_params_step_in_float64_as_torchs(rule):
    """A float64 param is stepped in float64, as torch.optim steps it (the kernels take fp32, bf16 and
    fp16: "auto" runs the reference). fp32 math would be off by about 1e-7 relative after one step;
    float64's rounding over 20 steps stays below 1e-12."""
    options = richest(rule)
    params, twin_params = make_params(SHAPES, torch.float64), make_params(SHAPES, torch.float64)
    ours = getattr(optim, rule.name)(params, **options)
    twin = rule.torch_twin(twin_params, **options)
    train(ours, params, STEPS, rule)
    train(twin, twin_params, STEPS, rule)
    for i, (param, twin_param) in enumerate(zip(params, twin_params)):
        assert param.dtype == torch.float64
        torch.testing.assert_close(param, twin_param, rtol=1e-12, atol=1e-12, msg=lambda m: f"{rule.name} param {i}: {m}")
        for name, value in ours.state[param].items():
            if value.dim():  # the step counter is fp32 in both
                torch.testing.assert_close(value, twin.state[twin_param][name], rtol=1e-12, atol=1e-12)
