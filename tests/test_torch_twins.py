"""Rules that torch.optim also has must match it to fp32 rounding, for every option, in both impls,
and move checkpoints both ways. Twenty steps: long enough for amsgrad's running max to matter."""
import io
import itertools

import pytest
import torch

import optim
from optim.registry import RULES, TOLERANCES
from tests.conftest import assert_close, make_params, random_grads

TWINS = [rule for rule in RULES.values() if rule.torch_twin is not None]
SHAPES = [(4097,), (3, 7, 257), (1,), (0,)]
STEPS = 20
FP32 = TOLERANCES[torch.float32]


def option_grid(rule):
    """Every combination of the rule's boolean options, with and without weight decay, lr as a float
    and as a tensor (torch accepts both)."""
    flags = [name for name, value in rule.defaults.items() if isinstance(value, bool)]
    for values in itertools.product((False, True), repeat=len(flags)):
        for weight_decay in (0.0, 0.1):
            for lr_is_tensor in (False, True):
                lr = torch.tensor(3e-3) if lr_is_tensor else 3e-3
                yield {**dict(zip(flags, values)), "weight_decay": weight_decay, "lr": lr, "betas": (0.8, 0.95)}


CASES = [pytest.param(rule, impl, options, id=f"{rule.name}-{impl}-" + "-".join(
    f"{k}={'tensor' if isinstance(v, torch.Tensor) else v}" for k, v in options.items() if k != "betas"))
    for rule in TWINS for impl in ("triton", "reference") for options in option_grid(rule)]


def train(optimizer, params, steps, first_step=0):
    for step in range(first_step, first_step + steps):
        for param, grad in zip(params, random_grads(params, seed=step)):
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
    for i, (param, twin_param) in enumerate(zip(params, twin_params)):
        assert_close(param, twin_param, FP32, f"{what}: param {i}")
        state, twin_state = optimizer.state[param], twin.state[twin_param]
        assert state.keys() == twin_state.keys(), f"{what}: state names {list(state)} vs torch's {list(twin_state)}"
        for name in state:
            assert_close(state[name], twin_state[name], FP32, f"{what}: state {name} of param {i}")


@pytest.mark.parametrize("rule, impl, options", CASES)
def test_matches_torch_optim(rule, impl, options):
    params, twin_params = make_params(SHAPES, torch.float32), make_params(SHAPES, torch.float32)
    ours = getattr(optim, rule.name)(params, **options, impl=impl)
    twin_options = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    twin = rule.torch_twin(twin_params, **twin_options)
    train(ours, params, STEPS)
    train(twin, twin_params, STEPS)
    assert_same(params, ours, twin_params, twin, f"{rule.name} ({impl}) vs torch.optim.{rule.name}")


@pytest.mark.parametrize("rule", TWINS, ids=[r.name for r in TWINS])
def test_defaults_are_torchs(rule):
    twin = rule.torch_twin([torch.zeros(1)])
    ours = getattr(optim, rule.name)([torch.zeros(1)])
    for name, value in ours.defaults.items():
        assert twin.defaults[name] == value, f"{rule.name}.{name}: ours {value}, torch's {twin.defaults[name]}"


@pytest.mark.parametrize("impl", ("triton", "reference"))
@pytest.mark.parametrize("rule", TWINS, ids=[r.name for r in TWINS])
def test_torch_checkpoint_loads_into_ours_and_back(rule, impl):
    """A torch.optim checkpoint continues in ours exactly as in torch, and ours continues in torch."""
    options = dict(lr=3e-3, weight_decay=0.1, amsgrad=True)
    twin_params = make_params(SHAPES, torch.float32)
    twin = rule.torch_twin(twin_params, **options)
    train(twin, twin_params, 5)
    checkpoint = saved_and_loaded(twin.state_dict())

    params = [p.detach().clone() for p in twin_params]
    ours = getattr(optim, rule.name)(params, **options, impl=impl)
    ours.load_state_dict(checkpoint)
    train(ours, params, 5, first_step=5)
    train(twin, twin_params, 5, first_step=5)
    assert_same(params, ours, twin_params, twin, f"torch.optim.{rule.name} checkpoint continued in ours ({impl})")

    back_params = [p.detach().clone() for p in params]
    back = rule.torch_twin(back_params, **options)
    back.load_state_dict(saved_and_loaded(ours.state_dict()))
    train(back, back_params, 5, first_step=10)
    train(ours, params, 5, first_step=10)
    assert_same(params, ours, back_params, back, f"our {rule.name} checkpoint continued in torch.optim ({impl})")
