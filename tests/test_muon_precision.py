"""fo.Muon with bf16 and fp16 params rounded stochastically (stochastic_rounding=, seed=), in both impls:
what the launcher gives every registry rule, tested as tests/test_stochastic_rounding.py tests them.

The problem: θ = 1 (a 64 × 64 matrix) and a gradient of ones at every step, no weight decay. U is then the
same matrix each step (all ones, exact in every dtype), so O = NS_k(U) is too, and every step moves each
element by the same γ'·O, below half a unit of θ's dtype at 1.0: to nearest, θ never moves.
"""
import copy

import pytest
import torch

import fusedoptim as fo

SHAPE = (64, 64)  # 4096 elements, the registry test's count
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}
# O's elements are about 1/64 here, so γ'·O is about lr/64: below half a unit at 1.0 (2^-9 in bf16, 2^-12 in
# fp16; checked in the test on the fp32 run's step).
LR = {torch.bfloat16: 0.05, torch.float16: 0.01}
STEPS = 12


def constant_steps(dtype, impl, stochastic, lr, steps=STEPS, seed=0):
    theta = torch.nn.Parameter(torch.ones(SHAPE, dtype=dtype))
    muon = fo.Muon([theta], lr=lr, weight_decay=0.0, impl=impl, stochastic_rounding=stochastic, seed=seed)
    for _ in range(steps):
        theta.grad = torch.ones_like(theta)
        muon.step()
    return theta.detach()


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_updates_below_half_a_unit_move_the_params_on_average(dtype, impl):
    lr = LR[dtype]
    exact = constant_steps(torch.float32, "reference", False, lr).double()
    unit = 2.0 ** -MANTISSA_BITS[dtype]
    travel = 1 - exact.mean().item()
    assert 0 < travel / STEPS < unit / 4, travel  # each step below half a unit at 1.0 (unit/2 under 1.0)
    assert torch.equal(constant_steps(dtype, impl, False, lr), torch.ones(SHAPE, dtype=dtype))
    moved = constant_steps(dtype, impl, True, lr).double()
    # As tests/test_stochastic_rounding.py: each rounding adds at most (one unit)²/4 of variance, so the mean
    # of 4096 elements after STEPS steps is within 6 standard deviations of the exact mean (seen: 0.1 and
    # 0.25 of one, reference); the travel, 0.0064 (bf16) and 0.0013 (fp16), is 5 and 8 of those bounds.
    bound = 6 * (STEPS * unit**2 / 4) ** 0.5 / SHAPE[0]
    assert abs(moved.mean().item() - exact.mean().item()) < bound, (moved.mean().item(), exact.mean().item())


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_same_seed_same_bits_other_seed_other_bits(impl):
    first = constant_steps(torch.bfloat16, impl, True, LR[torch.bfloat16], steps=2)
    again = constant_steps(torch.bfloat16, impl, True, LR[torch.bfloat16], steps=2)
    other = constant_steps(torch.bfloat16, impl, True, LR[torch.bfloat16], steps=2, seed=7)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("option", [dict(stochastic_rounding=1), dict(seed=-1), dict(seed=True), dict(seed=2**31)])
def test_bad_rounding_options_are_refused_by_name(option):
    (name, value), = option.items()
    with pytest.raises(ValueError, match=f"Muon: {name}={value!r}"):
        fo.Muon([torch.nn.Parameter(torch.ones(2, 2))], **option)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_a_copy_rounds_as_the_original(impl):
    """deepcopy keeps the launch count and the generator: the copy's next step draws the original's bits."""
    theta = torch.nn.Parameter(torch.ones(SHAPE, dtype=torch.bfloat16))
    muon = fo.Muon([theta], lr=LR[torch.bfloat16], weight_decay=0.0, impl=impl, stochastic_rounding=True)
    theta.grad = torch.ones_like(theta)
    muon.step()
    twin = copy.deepcopy(muon)
    twin_theta = twin.param_groups[0]["params"][0]
    for optimizer, param in ((muon, theta), (twin, twin_theta)):
        param.grad = torch.ones_like(param)
        optimizer.step()
    assert torch.equal(theta.detach(), twin_theta.detach())
