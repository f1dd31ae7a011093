"""What every optimizer of the registry must do as a torch.optim.Optimizer, in both impls."""
import copy
import inspect

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.base import OPTIONS
from fusedoptim.optim.registry import RULES, Tolerance
from tests.conftest import as_gradient, assert_close, impls_of, make_params, random_grads

IMPLS = ("triton", "reference")
SHAPES = [(257,), (3, 65)]


def rule_cases():
    return [pytest.param(rule, impl, id=f"{rule.name}-{impl}") for rule in RULES.values() for impl in impls_of(rule, IMPLS)]


def train(optimizer, params, steps, first_step=0, scheduler=None):
    for step in range(first_step, first_step + steps):
        for param, grad in zip(params, random_grads(params, seed=step, rule=optimizer.rule)):
            param.grad = grad
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def assert_same_run(params, optimizer, other_params, other, tolerance, what):
    for i, (param, other_param) in enumerate(zip(params, other_params)):
        assert_close(param, other_param, tolerance, f"{what}: param {i}")
        for name, value in optimizer.state[param].items():
            assert_close(value, other.state[other_param][name], tolerance, f"{what}: state {name} of param {i}")


@pytest.mark.parametrize("rule, impl", rule_cases())
def test_param_groups_with_their_own_lr_and_weight_decay(rule, impl):
    """Two groups in one optimizer = each group in an optimizer of its own."""
    params = make_params(SHAPES, torch.float32, rule=rule)
    settings = [{"lr": 1e-2, "weight_decay": 0.0}, {"lr": 3e-3, "weight_decay": 0.2}]
    settings = [{k: v for k, v in setting.items() if k in rule.defaults} for setting in settings]
    groups = [{"params": [params[i]], **settings[i]} for i in range(2)]
    both = getattr(optim, rule.name)(groups, impl=impl)
    alone = [make_params(SHAPES, torch.float32, rule=rule)[i:i + 1] for i in range(2)]
    separate = [getattr(optim, rule.name)(alone[i], **settings[i], impl=impl) for i in range(2)]
    for step in range(5):
        grads = random_grads(params, seed=step, rule=rule)
        for i in range(2):
            params[i].grad, alone[i][0].grad = grads[i], grads[i].clone()
            separate[i].step()
        both.step()
    for i in range(2):
        assert_same_run([params[i]], both, alone[i], separate[i], rule.tolerances[torch.float32], f"group {i}")


@pytest.mark.parametrize("rule, impl", rule_cases())
def test_lr_scheduler_changes_lr_mid_run(rule, impl):
    """A torch.optim.lr_scheduler drives our lr; the triton run tracks the reference run."""
    runs = []
    for this_impl in (impl, "reference"):
        params = make_params(SHAPES, torch.float32, rule=rule)
        optimizer = getattr(optim, rule.name)(params, lr=1e-2, impl=this_impl)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
        train(optimizer, params, 7, scheduler=scheduler)
        if not rule.learns_lr:  # SGDHD moves its lr itself; the scheduler scales what it learned
            assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
        runs.append((params, optimizer))
    assert_same_run(*runs[0], *runs[1], rule.tolerances[torch.float32], f"{rule.name} with StepLR")


@pytest.mark.parametrize("rule, impl", rule_cases())
def test_lr_as_tensor_changed_in_place(rule, impl):
    """An lr given as a tensor and changed with fill_ each step: the kernel reads the new value."""
    lr = torch.tensor(1e-2)
    params, ref_params = make_params(SHAPES, torch.float32, rule=rule), make_params(SHAPES, torch.float32, rule=rule)
    optimizer = getattr(optim, rule.name)(params, lr=lr, impl=impl)
    reference = getattr(optim, rule.name)(ref_params, lr=1e-2, impl="reference")
    for step in range(4):
        value = 1e-2 / (step + 1)
        lr.fill_(value)
        reference.param_groups[0]["lr"] = value
        train(optimizer, params, 1, first_step=step)
        train(reference, ref_params, 1, first_step=step)
    assert_same_run(params, optimizer, ref_params, reference, rule.tolerances[torch.float32], "tensor lr")


@pytest.mark.parametrize("rule, impl", rule_cases())
def test_param_without_grad_is_skipped(rule, impl):
    params = make_params(SHAPES, torch.float32, rule=rule)
    frozen = params[1].clone()
    optimizer = getattr(optim, rule.name)(params, impl=impl)
    for step in range(3):
        params[0].grad = random_grads(params, seed=step, rule=rule)[0]
        params[1].grad = None
        optimizer.step()
    assert torch.equal(params[1], frozen), "a param whose grad is None changed"
    assert len(optimizer.state[params[1]]) == 0, "a param whose grad is None got state"
    expected = {*rule.scalar_states, *rule.state_names(optimizer.param_groups[0])}
    assert set(optimizer.state[params[0]]) == expected, "the param with a grad lacks its state"


@pytest.mark.parametrize("rule, impl", rule_cases())
def test_state_dict_resume_equals_uninterrupted_run(rule, impl):
    params = make_params(SHAPES, torch.float32, rule=rule)
    optimizer = getattr(optim, rule.name)(params, impl=impl)
    train(optimizer, params, 3)
    checkpoint = copy.deepcopy((optimizer.state_dict(), [p.detach().clone() for p in params]))
    train(optimizer, params, 4, first_step=3)

    state_dict, saved = checkpoint
    resumed_params = [p.clone() for p in saved]
    resumed = getattr(optim, rule.name)(resumed_params, impl=impl)
    resumed.load_state_dict(state_dict)
    train(resumed, resumed_params, 4, first_step=3)
    assert_same_run(params, optimizer, resumed_params, resumed, Tolerance(atol=0.0, rtol=0.0), "resumed run")


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_closure_is_evaluated_with_grad_enabled(rule):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = getattr(optim, rule.name)([param])

    def closure():
        optimizer.zero_grad()
        loss = (param ** 2).sum()
        loss.backward()
        param.grad = as_gradient(rule, param.grad)
        return loss

    assert optimizer.step(closure).item() == pytest.approx(3.0)
    # The step read the closure's gradient: θ moved, or a state holds it (ADOPT's first step only makes v = g²)
    states = [value for value in optimizer.state[param].values() if value.dim() > 0]
    assert not torch.equal(param.detach(), torch.ones(3)) or any(state.any() for state in states)


def test_signature_is_the_rules():
    for rule in RULES.values():
        parameters = inspect.signature(getattr(optim, rule.name)).parameters
        assert list(parameters)[1:] == [*rule.defaults, *OPTIONS], rule.name
        assert all(parameters[name].kind == inspect.Parameter.KEYWORD_ONLY for name in OPTIONS)
        assert {name: parameters[name].default for name in rule.defaults} == rule.defaults


def test_a_group_stays_the_callers_dict_and_keeps_its_own_copy_of_a_dict_hyperparameter():
    """As torch.optim, the dict a caller gives as a param group is the optimizer's group (a change made
    through it reaches the step); a dict-valued hyperparameter (Tiger's lr_schedule) is copied, so that
    what writes into the optimizer's (dcp.load does) reaches neither the caller's nor the defaults."""
    rules = [rule for rule in RULES.values() if any(isinstance(v, dict) for v in rule.defaults.values())]
    assert rules  # Tiger's lr_schedule
    for rule in rules:
        name = next(name for name, value in rule.defaults.items() if isinstance(value, dict))
        given = dict(rule.defaults[name])
        group = {"params": make_params([(3,)], torch.float32), name: given}
        optimizer = getattr(optim, rule.name)([group, {"params": make_params([(3,)], torch.float32)}])
        assert optimizer.param_groups[0] is group
        optimizer.param_groups[0][name][10**6] = 1.0
        optimizer.param_groups[1][name][10**6] = 1.0
        assert 10**6 not in given and 10**6 not in optimizer.defaults[name], rule.name


def test_impl_set_after_steps_is_honoured_from_the_next_step_and_a_bad_one_refused():
    """Switching a built optimizer to the reference (to debug, say): the next step rebuilds its plan and
    runs the reference, equal from there to an optimizer built with it; a bad impl changes nothing."""
    rule = RULES["AdamW"]
    params, twin_params = (make_params(SHAPES, torch.float32, rule=rule) for _ in range(2))
    optimizer, twin = optim.AdamW(params, impl="triton"), optim.AdamW(twin_params, impl="triton")
    train(optimizer, params, 2)
    train(twin, twin_params, 2)
    optimizer.impl = "reference"
    with pytest.raises(ValueError, match="impl='cuda'"):
        optimizer.impl = "cuda"
    assert optimizer.impl == "reference" and "impl='reference'" in repr(optimizer)
    train(optimizer, params, 1, first_step=2)
    assert [group.impl for group in optimizer.runtime.plan.groups] == ["reference"]
    reference = optim.AdamW(twin_params, impl="reference")
    reference.load_state_dict(twin.state_dict())
    train(reference, twin_params, 1, first_step=2)
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b), "the step after impl='reference' was not the reference's"


@pytest.mark.parametrize("name, value", [("state_dtype", "int8"), ("stochastic_rounding", True), ("seed", 3),
                                         ("gradient_release", True), ("master_weight_bits", 32)])
def test_the_other_options_are_read_only_and_say_to_build_a_new_optimizer(name, value):
    params = make_params(SHAPES, torch.float32)
    optimizer = optim.AdamW(params, impl="triton")
    train(optimizer, params, 1)
    with pytest.raises(AttributeError, match=f"AdamW: {name} is fixed .* new optimizer with {name}={value!r}"):
        setattr(optimizer, name, value)
    assert getattr(optimizer, name) == OPTIONS[name]
    assert getattr(copy.deepcopy(optimizer), name) == OPTIONS[name]
