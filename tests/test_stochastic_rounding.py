"""Pure half precision: stochastic rounding of bf16 and fp16 params and states, in the kernel and in
the reference path (optim.rounding), seeded and reproducible."""
import pytest
import torch
import triton
import triton.language as tl

from fusedoptim import optim
from fusedoptim.kernels.rounding import round_stochastically
from fusedoptim.optim.rounding import round_with_bits
from tests.conftest import DEVICE, make_params, random_grads

HALF = [torch.bfloat16, torch.float16]
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}
SUBNORMAL_UNIT = {torch.bfloat16: 2.0 ** -133, torch.float16: 2.0 ** -24}  # the spacing below the normals
# A bias's step is lr/2: below half a unit at 1.0 (bf16: 2^-9 under 1.0, fp16: 2^-12).
BIAS_LR = {torch.bfloat16: 1e-3, torch.float16: 1e-4}


def bias_steps(dtype, impl, stochastic, steps=20, seed=0):
    """A bias at 1.0 whose gradient is always positive: Tiger moves it down by lr/2 a step, below
    half a unit of its dtype at 1.0."""
    bias = torch.ones(4096, dtype=dtype, device=DEVICE)
    tiger = optim.Tiger([bias], lr=BIAS_LR[dtype], impl=impl, stochastic_rounding=stochastic, seed=seed)
    for _ in range(steps):
        bias.grad = torch.ones_like(bias)
        tiger.step()
    return bias


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_updates_below_half_an_ulp_move_the_params_on_average(dtype, impl):
    assert torch.equal(bias_steps(dtype, impl, stochastic=False), torch.ones(4096, dtype=dtype, device=DEVICE))
    moved = bias_steps(dtype, impl, stochastic=True).double()
    # Each step's rounding adds at most (one unit)²/4 of variance: 20 steps at 1.0 in bf16 give a
    # standard deviation under 0.0087 per element, 1.4e-4 for the mean of 4096; allow 6 of those.
    # The mean moves by 20·lr/2 (bf16 0.01, fp16 0.001): 70 and 55 of those bounds.
    unit = 2.0 ** -MANTISSA_BITS[dtype]
    bound = 6 * (20 * unit**2 / 4) ** 0.5 / 4096**0.5
    assert abs(moved.mean().item() - (1 - 20 * BIAS_LR[dtype] / 2)) < bound, moved.mean().item()


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_each_element_lands_on_a_neighbour_of_the_exact_result(dtype, impl):
    """One step from random params: the stochastic result is within one unit of the fp32 result, and
    differs from round-to-nearest in a share of the elements."""
    runs = {}
    for stochastic, param_dtype in ((True, dtype), (False, torch.float32)):
        params = [p.to(dtype).to(param_dtype) for p in make_params([(64, 65)], torch.float32, seed=2)]
        tiger = optim.Tiger(params, lr=1e-2, impl=impl, stochastic_rounding=stochastic)
        for param, grad in zip(params, random_grads(params, seed=3)):
            param.grad = grad.to(dtype).to(param_dtype)
        tiger.step()
        runs[stochastic] = (params[0].double(), tiger.state[params[0]]["m"].double())
    for (rounded, exact), what in zip(zip(runs[True], runs[False]), ("param", "m")):
        unit = torch.exp2(torch.floor(torch.log2(exact.abs())) - MANTISSA_BITS[dtype]).clamp(min=SUBNORMAL_UNIT[dtype])
        assert ((rounded - exact).abs() < unit).all(), f"{what} beyond one unit of the exact result"
        nearest = exact.to(dtype).double()
        assert 0.05 < (rounded != nearest).double().mean() < 0.95, f"{what}: rounding never random"


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_same_seed_same_bits_other_seed_other_bits(impl):
    first, again = bias_steps(torch.bfloat16, impl, True, steps=3), bias_steps(torch.bfloat16, impl, True, steps=3)
    other = bias_steps(torch.bfloat16, impl, True, steps=3, seed=7)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def train_pure_bf16(stochastic, steps=150):
    """Linear regression with bf16 params, momentum and data, from half the target weights."""
    generator = torch.Generator().manual_seed(0)
    inputs, target = torch.randn(256, 64, generator=generator), torch.randn(1, 64, generator=generator)
    outputs = (inputs @ target.T).to(DEVICE, torch.bfloat16)
    inputs = inputs.to(DEVICE, torch.bfloat16)
    weight = (0.5 * target).to(DEVICE, torch.bfloat16).requires_grad_()
    tiger = optim.Tiger([weight], lr=1e-3, weight_decay=0.0, stochastic_rounding=stochastic, seed=1)
    for _ in range(steps):
        loss = (inputs @ weight.T - outputs).float().square().mean()
        loss.backward()
        tiger.step()
        tiger.zero_grad()
    with torch.no_grad():
        return (inputs @ weight.T - outputs).float().square().mean().item()


def test_pure_bf16_training_stalls_to_nearest_and_learns_stochastically():
    """lr·RMS(θ) = 1e-3·RMS is below half a bf16 unit of most weights: round-to-nearest drops those
    updates and the loss hardly moves, stochastic rounding keeps them on average and the loss falls
    as in fp32 (150 steps: fp32 reaches 0.77 of the start; measured under the interpreter)."""
    start = train_pure_bf16(False, steps=0)
    nearest, stochastic = train_pure_bf16(False), train_pure_bf16(True)
    assert nearest > 0.95 * start, (start, nearest)
    assert stochastic < 0.85 * start, (start, stochastic)


@triton.jit
def _round_kernel(value_ptr, random_ptr, out_ptr, N: tl.constexpr, DTYPE: tl.constexpr):
    offsets = tl.arange(0, N)
    random16 = tl.load(random_ptr + offsets).to(tl.uint32)
    tl.store(out_ptr + offsets, round_stochastically(tl.load(value_ptr + offsets), DTYPE, random16))


def edge_values(dtype):
    """fp32 values at the edges of ``dtype``: ±0, fp32 and ``dtype`` subnormals, the carry into the
    exponent, the largest finite value and just past it, ±inf, NaN, and ordinary values of both signs."""
    largest = torch.finfo(dtype).max
    tiny = torch.finfo(dtype).smallest_normal
    values = [0.0, -0.0, 1e-45, -3e-45, 2.0**-130 * 1.3, -(2.0**-133) * 2.7, tiny * 0.37, -tiny * 1.61,
              2.0**-24 * 0.3, 2.0**-24 * 5.77, 1.0, -1.0, 1.0 + 2.0**-20, -(2.0 - 2.0**-23), 3.1415927, -2.718e-3,
              largest, -largest, largest * (1 + 2.0**-20), -largest * (1 + 2.0**-20), float("inf"), float("-inf"),
              float("nan"), 1e38, -7.3e4]
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_the_kernel_and_the_reference_round_alike_given_the_same_bits(dtype):
    """kernels.rounding.round_stochastically and optim.rounding.round_with_bits: bit for bit on the
    edges of the format and on random values, for random bits including 0 and 2^16 − 1."""
    generator = torch.Generator().manual_seed(5)
    values = torch.cat([edge_values(dtype).repeat(4), torch.randn(924, generator=generator)
                        * torch.exp2(torch.randint(-30, 30, (924,), generator=generator).float())])
    random16 = torch.randint(0, 2**16, (1024,), generator=generator)
    random16[:25], random16[25:50] = 0, 2**16 - 1
    out = torch.empty(1024, dtype=dtype)
    _round_kernel[(1,)](values, random16.to(torch.int32), out, N=1024, DTYPE=tl.bfloat16 if dtype == torch.bfloat16
                        else tl.float16)
    expected = round_with_bits(values, dtype, random16)
    assert torch.equal(out.isnan(), expected.isnan())  # NaN's payload may differ
    assert torch.equal(out[~out.isnan()].view(torch.int16), expected[~expected.isnan()].view(torch.int16))


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_rounding_over_every_draw_is_exactly_unbiased(dtype):
    """Over all 2^16 values of the random bits, each value rounds to one of its two neighbours and their
    mean is the value itself: exactly for bf16 everywhere and fp16 in its normal range, within 2^-12
    of a unit below it (fp16 subnormals, whose fp32 carries more bits than 13 random ones resolve).
    Past the largest finite value, at ±inf and NaN, every draw gives the nearest rounding; ±0 stays."""
    values = edge_values(dtype)
    every = torch.arange(2**16)
    for value in values:
        rounded = round_with_bits(value.expand(2**16).contiguous(), dtype, every)
        if value.isnan():
            assert rounded.isnan().all()
            continue
        if not value.abs() <= torch.finfo(dtype).max or value == 0:
            assert torch.equal(rounded.view(torch.int16), value.to(dtype).expand(2**16).view(torch.int16)), value
            continue
        exact = value.double()
        unit = torch.exp2(torch.floor(torch.log2(exact.abs())) - MANTISSA_BITS[dtype]).clamp(min=SUBNORMAL_UNIT[dtype])
        assert ((rounded.double() - exact).abs() < unit).all(), value
        bias = (rounded.double().mean() - exact).abs()
        if dtype == torch.bfloat16 or value.abs() >= torch.finfo(dtype).smallest_normal:
            assert bias == 0, (value, bias)
        else:
            assert bias <= 2.0**-12 * SUBNORMAL_UNIT[dtype], (value, bias)


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_neighbouring_elements_round_independently(dtype, impl):
    """Every element lands exactly halfway between two neighbours, so each rounds up with probability
    1/2: two elements whose draws are independent agree half of the time. Elements sharing their
    random bits (one draw for a group, as neighbours share a Philox draw's 128 bits) would agree
    always: per-element statistics (the other tests) cannot see it. 4095 pairs a distance: an
    agreement's standard deviation is about 0.008 (0.011 for 2048 disjoint pairs), the bounds 9 of those."""
    unit = 2.0 ** -MANTISSA_BITS[dtype]
    param = torch.ones(4096, dtype=dtype, device=DEVICE)
    sgd = optim.SGD([param], lr=1.0, impl=impl, stochastic_rounding=True, seed=3)
    param.grad = torch.full_like(param, -unit / 2)  # θ − lr·g = 1 + unit/2: halfway to the next value
    sgd.step()
    up = param.double() > 1.0
    assert 0.4 < up.double().mean() < 0.6, f"{up.double().mean():.3f} of the elements rounded up"
    for distance in (1, 2, 3, 4, 7, 8):
        agree = (up[distance:] == up[:-distance]).double().mean()
        assert 0.4 < agree < 0.6, f"elements {distance} apart agree {agree:.3f} of the time: they share random bits"
