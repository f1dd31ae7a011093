"""Gradient release: each param stepped by its gradient hook the moment autograd has its gradient, then
the gradient freed: for every rule whose update needs no other param's gradient; under accumulation
for Tiger, which folds each micro-batch into its momentum."""
import pytest
import torch
from torch import nn

from fusedoptim import optim
from fusedoptim.optim.registry import RULES, Tolerance
from tests.conftest import DEVICE, assert_close, hyperparameters_for_tests


def model_and_batches(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)).to(DEVICE)
    batches = [torch.randn(8, 16, device=DEVICE) for _ in range(6)]
    return model, batches


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_release_trains_exactly_as_accumulation_with_step_per_micro_batch(impl):
    """k = 3: six micro-batches, two updates; backward() alone equals backward, step, zero_grad."""
    runs = []
    for release in (False, True):
        model, batches = model_and_batches()
        tiger = optim.Tiger(optim.tiger_param_groups(model), lr=1e-2, grad_accum_steps=3, impl=impl,
                            gradient_release=release)
        for inputs in batches:
            model(inputs).square().mean().backward()
            if release:
                assert all(p.grad is None for p in model.parameters()), "a gradient outlived its backward"
            else:
                tiger.step()
                tiger.zero_grad()
        runs.append((model, tiger))
    (kept, kept_tiger), (released, released_tiger) = runs
    initial = model_and_batches()[0]
    for a, b, start in zip(kept.parameters(), released.parameters(), initial.parameters()):
        assert not torch.equal(a, start), "the params never moved: the comparison would be vacuous"
        assert_close(b, a, Tolerance(atol=0, rtol=0), f"param {tuple(a.shape)}")
        assert_close(released_tiger.state[b]["m"], kept_tiger.state[a]["m"], Tolerance(atol=0, rtol=0), "m")
        assert released_tiger.state[b]["step"].item() == 6


RELEASED = [rule for rule in RULES.values() if not rule.release_refused
            and not rule.only_sparse_gradients]  # its model's gradients are dense


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("rule", RELEASED, ids=lambda rule: rule.name)
def test_release_without_accumulation_equals_step_for_every_rule_that_allows_it(rule, impl):
    """k = 1: backward() alone (each param stepped by its gradient hook, then its gradient freed) equals
    backward, step, zero_grad — params and every state, bit for bit, over three steps."""
    runs = []
    for release in (False, True):
        model, batches = model_and_batches()
        if rule.nonnegative_params:
            with torch.no_grad():
                for p in model.parameters():
                    p.abs_()
        optimizer = getattr(optim, rule.name)(model.parameters(), **hyperparameters_for_tests(rule), impl=impl,
                                              gradient_release=release)
        for inputs in batches[:3]:
            model(inputs).square().mean().backward()
            if release:
                assert all(p.grad is None for p in model.parameters()), "a gradient outlived its backward"
            else:
                optimizer.step()
                optimizer.zero_grad()
        runs.append((model, optimizer))
    (kept, kept_optimizer), (released, released_optimizer) = runs
    for a, b in zip(kept.parameters(), released.parameters()):
        assert_close(b, a, Tolerance(atol=0, rtol=0), f"{rule.name}: param {tuple(a.shape)}")
        assert set(released_optimizer.state[b]) == set(kept_optimizer.state[a])
        for name, value in kept_optimizer.state[a].items():
            assert_close(released_optimizer.state[b][name], value, Tolerance(atol=0, rtol=0), f"{rule.name}: {name}")


@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if rule.release_refused], ids=lambda rule: rule.name)
def test_rules_that_need_other_params_gradients_refuse_release(rule):
    with pytest.raises(ValueError, match=f"gradient_release=True .* {rule.name} cannot: .*{rule.release_refused[:20]}"):
        getattr(optim, rule.name)([torch.zeros(3)], gradient_release=True)
