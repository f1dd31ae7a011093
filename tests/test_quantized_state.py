"""Quantized optimizer state (int8, int4): the schemes' equations, checkpoints of codes and scales,
the memory model.

The fused step against the reference (to the code) runs in the parity matrix, the GradScaler and the
bad-input suites (tests/test_parity.py, test_amp.py, test_bad_input.py); here what those do not say.
"""
import copy
import io

import pytest
import torch

from fusedoptim import optim
from fusedoptim.autotune import LaunchConfig, forced_config
from fusedoptim.optim.quantization import (FORMATS, QUANTIZED_DTYPES, UNSIGNED, code_values, dequantize, new_codes, new_count,
                                quantize, quantize_constant, scale_numel)
from fusedoptim.optim.registry import RULES, Tolerance
from tests.conftest import DEVICE, assert_close, make_params
from tests.test_amp import assert_identical, hyper, snapshot
from tests.test_step_plan import layout_grads, layout_params, set_grads

STATEFUL = [rule for rule in RULES.values() if rule.state_names(hyper(rule)) and rule.quantized_states]
QUANT_BLOCK = FORMATS["int8"].block
SHAPES = [(300,), (5, 13)]  # 300: a full quantization block and a partial one
ULP = Tolerance(atol=0.0, rtol=2.0**-23)


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if not rule.quantized_states], ids=lambda rule: rule.name)
def test_a_rule_whose_states_cannot_be_quantized_refuses_them_at_construction(rule, state_dtype):
    """SparseAdam leaves the rows a sparse gradient does not hold exactly alone, which requantizing their
    blocks would not: refused when built, saying what to use, rather than drifting silently."""
    with pytest.raises(ValueError, match=f"state_dtype={state_dtype!r} would requantize .*use state_dtype=None"):
        getattr(optim, rule.name)([torch.zeros(3)], impl="reference", state_dtype=state_dtype)


def coded(values, kind, count=None, state_dtype="int8"):
    codes = new_codes(values, state_dtype)
    scales = torch.empty(scale_numel(values.numel(), state_dtype), device=values.device)
    quantize(values, kind, codes, scales, count)
    return codes, scales


def test_signed_codes_are_linear_in_the_blocks_absmax():
    """s = max|x| per block of 256, c = ⌊127·x/s + ½⌋, x̂ = c·s/127: within half a step of x."""
    values = torch.randn(600, generator=torch.Generator().manual_seed(0))
    values[256:512] *= 1e-3  # a block of small values keeps its own resolution
    codes, scales = coded(values, "signed")
    blocks = values.split(QUANT_BLOCK)
    assert torch.equal(scales, torch.stack([block.abs().max() for block in blocks]))
    expected = torch.cat([torch.floor(127 * block / block.abs().max() + 0.5) for block in blocks])
    assert torch.equal(codes.float(), expected)
    step = scales.repeat_interleave(QUANT_BLOCK)[:600] / 127
    assert ((dequantize(codes, scales, "signed") - values).abs() <= step / 2 * (1 + 1e-6)).all()


def test_nonnegative_codes_are_companded_so_small_values_keep_a_code():
    """c = ⌊255·√(v/s) + ½⌋ (unsigned, in the int8's bits), v̂ = (c/255)²·s: a value 10⁻⁴ of its
    block's largest gets code ⌊2.55 + ½⌋ = 3, where a linear map of 255 levels would give 0 (and m/√v̂
    would blow up)."""
    values = torch.full((256,), 1e-4)
    values[0] = 1.0
    codes, scales = coded(values, "nonnegative")
    assert scales.tolist() == [1.0]
    assert codes[0].view(torch.uint8) == 255 and (codes[1:].view(torch.uint8) == 3).all()
    assert torch.allclose(dequantize(codes, scales, "nonnegative")[1:], torch.full((255,), (3 / 255) ** 2))
    assert torch.floor(255 * values[1] + 0.5) == 0  # the linear map's code


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
@pytest.mark.parametrize("kind, count", [("nonnegative", None), ("accumulator", new_count(0, "cpu") + 1)],
                         ids=["nonnegative", "accumulator"])
def test_no_positive_value_of_an_unsigned_kind_takes_code_zero(state_dtype, kind, count):
    """The zero point (Li et al. 2023): v = 10⁻⁸ beside its block's largest, 1, would take code
    ⌊L·√10⁻⁸ + ½⌋ = 0 at either width (L = 15 or 255) and read 0, so that m/(√v̂ + ε) is m/ε. It takes
    code 1 and reads (1/L)²; a v of 0 keeps code 0 and reads 0."""
    block = FORMATS[state_dtype].block
    levels = FORMATS[state_dtype].levels(kind)
    values = torch.full((block,), 1e-8)
    values[0], values[1] = 1.0, 0.0
    codes, scales = coded(values, kind, count, state_dtype)
    assert code_values(codes, kind, block).tolist() == [levels, 0] + [1] * (block - 2)
    read = dequantize(codes, scales, kind, values)
    assert read[1] == 0 and torch.allclose(read[2:], torch.full((block - 2,), (1 / levels) ** 2))


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_adamw_int4_moves_no_element_by_more_than_lr_when_its_gradient_stops(impl):
    """How the zero point sent AdamW int4 to NaN in the state_precision reproduction. Element 0's
    gradient of 1000 on the first step makes v = 1000 there (decaying by 0.999 a step) and m = 500
    (halving, β1 = 0.5); the others' gradient of 1 makes their v 10⁻³, 10⁻⁶ of their block's
    largest: code ⌊15·10⁻³ + ½⌋ = 0, v̂ = 0 every step, were a positive v allowed code 0. Their m of
    0.5 takes a code of its own once element 0's has halved below 7 (step 8): m̂ = 3.9/7. On step 9
    their gradient stops: v = 0.999·v̂ = 0 made their step lr·m/ε, 2.8·10⁷·lr. With v̂ ≥ 1000/15²
    every element moves by at most lr on every step (1.5·lr allowed)."""
    lr = 1e-3
    params = [torch.zeros(128, device=DEVICE)]
    optimizer = optim.AdamW(params, lr=lr, betas=(0.5, 0.999), weight_decay=0.0, state_dtype="int4", impl=impl)
    for step in range(12):
        before = params[0].clone()
        grad = torch.full((128,), 1.0 if step < 8 else 0.0, device=DEVICE)
        grad[0] = 1000.0 if step == 0 else 0.0
        params[0].grad = grad
        optimizer.step()
        moved = (params[0] - before).abs().max().item()
        assert moved <= 1.5 * lr, f"step {step + 1}: an element moved by {moved / lr:.3g} lr"


def test_stochastic_codes_are_unbiased_and_reproducible():
    """An accumulator's codes round up with probability equal to the fraction: over 2000 elements
    of the same value the mean code is the exact one within 4 standard deviations, and the same
    count draws the same codes, another count others."""
    values = torch.full((2000,), 0.3**2)
    values[::QUANT_BLOCK] = 1.0  # each block's largest: exact codes 255·0.3 = 76.5 for the others
    first, _ = coded(values, "accumulator", new_count(0, "cpu") + 1)
    again, _ = coded(values, "accumulator", new_count(0, "cpu") + 1)
    other, _ = coded(values, "accumulator", new_count(0, "cpu") + 2)
    rest = torch.ones(2000, dtype=torch.bool)
    rest[::QUANT_BLOCK] = False
    mean = first[rest].view(torch.uint8).double().mean()
    assert abs(mean - 76.5) < 4 * 0.5 / rest.sum() ** 0.5
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_adagrad_accumulates_small_increments_stochastically():
    """One element's gradient of 10 on the first step sets its block's scale at 100; the others add
    0.1² = 0.01 every step, to 3.0 after 300 steps. Their code 255·√(0.01·t/100) = 2.55·√t moves by
    1.275/√t per step, less than half a code from step 7 on: rounded to nearest the codes stall there
    (the sum stays at (7/255)²·100 = 0.075). Rounded stochastically they move by the increment on
    average: the mean sum is 3.0 within 10 % (unbiased in √v; the spread of the codes, about ±9,
    adds their variance, +4 %, to v)."""
    params = [torch.zeros(256, device=DEVICE)]
    optimizer = optim.Adagrad(params, lr=1e-6, state_dtype="int8", impl="triton")
    for step in range(300):
        grad = torch.full((256,), 0.1, device=DEVICE)
        grad[0] = 10.0 if step == 0 else 0.0
        params[0].grad = grad
        optimizer.step()
    state = optimizer.state[params[0]]
    total = dequantize(state["sum"], state["sum_scale"], "accumulator")
    assert total[0] == 100.0
    assert abs(total[1:].mean().item() - 3.0) < 0.3, f"mean sum {total[1:].mean().item()}, not 3.0"


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
def test_a_constant_state_is_coded_as_quantizing_the_whole_tensor_codes_it(state_dtype):
    """A new state (its initial value, or zero) is coded from one pair of elements, without a param-sized
    fp32 copy: its codes and scales equal quantize's of the whole tensor bit for bit, for every kind, in a
    partial block and with an odd int4 tail (one code, its high nibble zero)."""
    for kind, unsigned in UNSIGNED.items():
        for value in (0.0, 0.1, 1.0, 3.7) if unsigned else (0.0, 0.1, -0.3):
            for numel in (1, 256, 301):
                expected_codes, expected_scales = coded(torch.full((numel,), value), kind, state_dtype=state_dtype)
                codes, scales = new_codes(torch.empty(numel), state_dtype), torch.empty(scale_numel(numel, state_dtype))
                quantize_constant(value, kind, codes, scales, numel)
                assert torch.equal(codes, expected_codes), (kind, value, numel)
                assert torch.equal(scales, expected_scales), (kind, value, numel)


# Per state, for params of 300, 5×13 and 1 elements: int8, a byte each (366) and a scale per started
# block of 256 (2 + 1 + 1); int4, a byte per started pair (150 + 33 + 1) and a scale per started
# block of 128 (3 + 1 + 1).
BYTES_PER_STATE = {"int8": 366 + 4 * 4, "int4": 184 + 4 * 5}


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
@pytest.mark.parametrize("rule", STATEFUL, ids=lambda rule: rule.name)
def test_measured_state_bytes_equal_the_registry_model(rule, state_dtype):
    params = make_params([(300,), (5, 13), (1,)], torch.float32, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyper(rule), state_dtype=state_dtype, impl="reference")
    set_grads(params, 0)
    optimizer.step()
    measured = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values())
    analytic = rule.state_bytes(optimizer.param_groups[0], [300, 65, 1], state_dtype=state_dtype)
    n_states = len(rule.state_names(hyper(rule)))
    assert measured == analytic == n_states * BYTES_PER_STATE[state_dtype] + 3 * 4 * len(rule.scalar_states)


def _saved(optimizer):
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
@pytest.mark.parametrize("rule", STATEFUL, ids=lambda rule: rule.name)
def test_a_resumed_quantized_run_equals_the_uninterrupted_one_bit_for_bit(rule, state_dtype):
    """The checkpoint holds the codes and fp32 scales (and the group's draw counter): a new optimizer
    loading it after 2 steps takes 3 more exactly as the original does."""
    params = make_params(SHAPES, torch.float32, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyper(rule), state_dtype=state_dtype, impl="triton", seed=5)
    for step in range(2):
        set_grads(params, step)
        optimizer.step()
    saved = _saved(optimizer)
    for name in rule.state_names(hyper(rule)):
        assert all(state[name].dtype == FORMATS[state_dtype].codes_dtype
                   and state[name + "_scale"].dtype == torch.float32 for state in saved["state"].values())
    resumed_params = [p.detach().clone() for p in params]
    resumed = getattr(optim, rule.name)(resumed_params, **hyper(rule), state_dtype=state_dtype, impl="triton", seed=5)
    resumed.load_state_dict(saved)
    for step in range(2, 5):
        for ps in (params, resumed_params):
            set_grads(ps, step)
        optimizer.step()
        resumed.step()
    assert_identical(snapshot(resumed, resumed_params), snapshot(optimizer, params), f"{rule.name} resumed")


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
@pytest.mark.parametrize("rule", STATEFUL, ids=lambda rule: rule.name)
def test_checkpoints_convert_between_quantized_and_float_states(rule, state_dtype):
    """A quantized checkpoint loads into an fp32-state optimizer as its dequantized values (no scales
    left) and into one of the other quantized dtype as those values' codes; an fp32 checkpoint into a
    quantized optimizer as its values' codes and scales."""
    params = make_params(SHAPES, torch.float32, rule=rule)
    quantized = getattr(optim, rule.name)(params, **hyper(rule), state_dtype=state_dtype, impl="reference")
    plain = getattr(optim, rule.name)(params, **hyper(rule), impl="reference")
    set_grads(params, 0)
    quantized.step()
    plain.step()
    kinds = {spec.name: spec.kind for spec in rule.states}
    other = next(d for d in QUANTIZED_DTYPES if d != state_dtype)
    into_float, into_quantized, into_other = (getattr(optim, rule.name)(params, **hyper(rule), state_dtype=d)
                                              for d in (None, state_dtype, other))
    into_float.load_state_dict(_saved(quantized))
    into_quantized.load_state_dict(_saved(plain))
    into_other.load_state_dict(_saved(quantized))
    for p in params:
        for name in rule.state_names(hyper(rule)):
            values = dequantize(quantized.state[p][name], quantized.state[p][name + "_scale"], kinds[name], p)
            assert torch.equal(into_float.state[p][name], values)
            assert name + "_scale" not in into_float.state[p]
            for optimizer, source, dtype in ((into_quantized, plain.state[p][name], state_dtype),
                                             (into_other, values, other)):
                codes, scales = coded(source, kinds[name], state_dtype=dtype)
                assert torch.equal(optimizer.state[p][name], codes), f"{name} into {dtype}"
                assert torch.equal(optimizer.state[p][name + "_scale"], scales), f"{name}'s scales into {dtype}"


def _adam_on_layouts(state_dtype, impl):
    """Adam with quantized states, three steps on channels-last and transposed params: (params, optimizer)."""
    params = layout_params()
    optimizer = optim.Adam(params, lr=1e-2, weight_decay=0.1, state_dtype=state_dtype, impl=impl)
    for step in range(3):
        for p, g in zip(params, layout_grads(params, step)):
            p.grad = g
        optimizer.step()
    return params, optimizer


def test_int8_states_of_channels_last_and_transposed_params_are_coded_in_memory_order():
    """Codes are laid out as their param and blocked in memory order, where the kernel walks them:
    the kernel equals the reference to the code, and a contiguous checkpoint of them is recoded in
    the param's layout."""
    (params, optimizer), (ref_params, reference) = (_adam_on_layouts("int8", impl) for impl in ("triton", "reference"))
    for p, r in zip(params, ref_params):
        assert optimizer.state[p]["exp_avg"].stride() == p.stride()
        assert_identical([optimizer.state[p][name] for name in ("exp_avg", "exp_avg_sq")],
                         [reference.state[r][name] for name in ("exp_avg", "exp_avg_sq")], "codes")
    saved = copy.deepcopy(optimizer.state_dict())
    for state in saved["state"].values():
        state["exp_avg"] = state["exp_avg"].contiguous()
    optimizer.load_state_dict(saved)
    for p, r in zip(params, ref_params):
        state, expected = optimizer.state[p], reference.state[r]
        assert state["exp_avg"].stride() == p.stride()
        # recoded from x̂ = c·s/127, whose largest is s within an ulp: the same codes, scales within an ulp
        assert_close(dequantize(state["exp_avg"], state["exp_avg_scale"], "signed"),
                     dequantize(expected["exp_avg"], expected["exp_avg_scale"], "signed"), ULP, "recoded exp_avg")


def test_int4_codes_of_channels_last_and_transposed_params_follow_their_memory_order():
    """int4 codes are flat, two a byte, in the param's memory order, where the kernel walks it: the
    kernel equals the reference to the byte, and the codes dequantize to the param's layout."""
    runs = []
    for impl in ("triton", "reference"):
        params, optimizer = _adam_on_layouts("int4", impl)
        runs.append([optimizer.state[p][name] for p in params for name in ("exp_avg", "exp_avg_sq")])
        values = dequantize(optimizer.state[params[0]]["exp_avg"], optimizer.state[params[0]]["exp_avg_scale"],
                            "signed", params[0])
        assert values.stride() == params[0].stride()
    assert_identical(*runs, "int4 codes")


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
def test_the_masked_tail_writes_nothing_past_the_codes_and_scales(state_dtype):
    """Codes and scales as the heads of larger buffers, sentinels past their ends: 1101 elements end
    in a partial quantization block (and in half a byte of int4 codes), and two steps of the kernel
    leave every sentinel as it was."""
    params = make_params([(1101,)], torch.float32)
    optimizer = optim.Adam(params, lr=1e-2, state_dtype=state_dtype, impl="triton")
    set_grads(params, 0)
    optimizer.step()
    state, buffers = optimizer.state[params[0]], []
    for name in ("exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale"):
        buffer = torch.full((state[name].numel() + 16,), 77, dtype=state[name].dtype, device=DEVICE)
        buffer[:state[name].numel()].copy_(state[name])
        state[name] = buffer[:state[name].numel()]
        buffers.append((name, buffer, state[name].numel()))
    for step in (1, 2):
        set_grads(params, step)
        optimizer.step()
    for name, buffer, numel in buffers:
        assert (buffer[numel:] == 77).all(), f"{state_dtype}: written past the end of {name}"


def test_a_launch_block_that_is_not_a_multiple_of_the_quantization_block_is_refused():
    """A scale is written by the one program that holds its whole block: a launch block of 128 would
    split a block of 256 between two programs, so the plan refuses it before any change."""
    params = make_params([(1000,)], torch.float32)
    optimizer = optim.Adam(params, state_dtype="int8", impl="triton")
    set_grads(params, 0)
    before = params[0].clone()
    with forced_config(LaunchConfig(block_size=128, blocks_per_program=1, num_warps=1, num_stages=1)):
        with pytest.raises(ValueError, match="block of 128 elements is not a multiple of the quantization block"):
            optimizer.step()
    assert torch.equal(params[0], before)


def test_a_nan_makes_its_blocks_scale_nan_in_kernel_and_reference_alike():
    """torch's amax propagates NaN where Triton's max skips it: the kernel makes the scale of a block
    holding a NaN NaN itself, so its state reads NaN as the oracle's does (and an inf block inf)."""
    runs = []
    for impl in ("triton", "reference"):
        params = make_params([(600,)], torch.float32)
        optimizer = optim.Adam(params, lr=1e-2, state_dtype="int8", impl=impl)
        grad = torch.randn(600, generator=torch.Generator().manual_seed(1), device=DEVICE)
        grad[3], grad[300] = float("nan"), float("inf")
        params[0].grad = grad
        optimizer.step()
        runs.append([params[0], *optimizer.state[params[0]].values()])
    for actual, expected in zip(*runs):
        assert_close(actual, expected, Tolerance(atol=1e-6, rtol=1e-5), "after a NaN and an inf gradient")
    scales = optimizer.state[params[0]]["exp_avg_scale"]
    assert scales[0].isnan() and scales[1].isinf() and scales[2].isfinite()


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
@pytest.mark.parametrize("rule", [RULES["AdamW"], RULES["SGD"]], ids=lambda rule: rule.name)
def test_loading_a_live_state_dict_leaves_the_source_optimizer_alone(rule, state_dtype):
    """opt2.load_state_dict(opt1.state_dict()), no torch.save between: the state dict holds opt1's
    very tensors, so opt2 must copy its codes and scales (and every other state), or stepping opt2
    changes opt1."""
    params = make_params(SHAPES, torch.float32, rule=rule)
    source = getattr(optim, rule.name)(params, **hyper(rule), state_dtype=state_dtype, impl="triton")
    set_grads(params, 0)
    source.step()
    before = snapshot(source, params)
    copies = [p.detach().clone() for p in params]
    loaded = getattr(optim, rule.name)(copies, **hyper(rule), state_dtype=state_dtype, impl="triton")
    loaded.load_state_dict(source.state_dict())
    for step in (1, 2):
        set_grads(copies, step)
        loaded.step()
    assert_identical(snapshot(source, params), before, f"{rule.name} {state_dtype}: the source after the copy stepped")


# Blocks of known contents: zeros, values below the smallest scale the codes are made against (2^-120,
# where the factor L/s would overflow), ordinary values, and a block whose largest value is negative.
BLOCK_CONTENTS = (0.0, 1e-38, 1.0, -3.0)


def known_gradient(state_dtype):
    block = FORMATS[state_dtype].block
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(len(BLOCK_CONTENTS) * block - 7, generator=generator) * 0.5 + 0.25  # the last block partial
    blocks = list(values.split(block))
    for part, size in zip(blocks, BLOCK_CONTENTS):
        part.mul_(size)
        part[3] = size  # the block's largest magnitude, exactly
    return torch.cat(blocks).to(DEVICE), [abs(size) for size in BLOCK_CONTENTS]


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
def test_scales_are_each_blocks_absmax_exactly(state_dtype, impl):
    """A scale is its block's max |x| (max v for a nonnegative state), stored as it is, not the value
    the codes are made against (at least 2^-120): compared exactly, after SGD's first step (the
    momentum buffer is the gradient) against the known blocks, and after Adam's first step (v = (1 −
    β2)·g²) against its fp64 value to 1 ulp. A wrong scale passes every comparison made at a rule's
    tolerance, as the codes of a small block dequantize to about 0 either way."""
    grad, absmax = known_gradient(state_dtype)
    param = torch.zeros_like(grad)
    sgd = optim.SGD([param], lr=0.1, momentum=0.9, state_dtype=state_dtype, impl=impl)
    param.grad = grad
    sgd.step()
    assert sgd.state[param]["momentum_buffer_scale"].tolist() == torch.tensor(absmax).tolist()
    grad = grad * 1e-9 + 3e-18 * (grad == 1e-38)  # g² from 9e-36 (v below 2^-120) to 9e-18
    param = torch.zeros_like(grad)
    adam = optim.Adam([param], state_dtype=state_dtype, impl=impl)
    param.grad = grad
    adam.step()
    expected = (grad.double() ** 2 * (1 - 0.999)).split(FORMATS[state_dtype].block)
    expected = torch.stack([block.max() for block in expected]).float()
    assert_close(adam.state[param]["exp_avg_sq_scale"], expected, ULP, f"Adam {state_dtype} ({impl}): exp_avg_sq_scale")


@pytest.mark.parametrize("state_dtype", QUANTIZED_DTYPES)
@pytest.mark.parametrize("rule", [RULES["AdamW"], RULES["SGD"], RULES["Adagrad"]], ids=lambda rule: rule.name)
def test_kernel_and_reference_scales_agree_to_an_ulp(rule, state_dtype):
    """3 steps: every scale of the fused step equals the reference's to 1 ulp (the states they are the
    absmax of may differ by an ulp: AdamW's do), not to the rule's tolerance, which a wrong scale of a
    block of small values passes."""
    runs = []
    for impl in ("triton", "reference"):
        params = make_params(SHAPES, torch.float32, rule=rule)
        optimizer = getattr(optim, rule.name)(params, **hyper(rule), state_dtype=state_dtype, impl=impl)
        for step in range(3):
            set_grads(params, step)
            optimizer.step()
        runs.append([value for p in params for name, value in sorted(optimizer.state[p].items())
                     if name.endswith("_scale")])
    assert runs[0] and len(runs[0]) == len(runs[1]), f"{rule.name}: no scales, or not as many"
    for i, (kernel, reference) in enumerate(zip(*runs)):
        assert_close(kernel, reference, ULP, f"{rule.name} {state_dtype}: scales {i}, kernel against reference")
