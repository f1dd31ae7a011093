"""Gradient release: each gradient folded into Tiger's momentum as autograd makes it, then freed."""
import pytest
import torch
from torch import nn

import optim
from optim.registry import Tolerance
from tests.conftest import DEVICE, assert_close


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


def test_rules_that_need_the_whole_gradient_refuse_release():
    for rule in ("Lion", "Adam", "AdamW", "SGD", "Signum"):
        with pytest.raises(ValueError, match="reads the step's whole gradient"):
            getattr(optim, rule)([torch.zeros(3)], gradient_release=True)
