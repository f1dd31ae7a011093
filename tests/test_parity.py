"""The parity matrix: for every registry row, the fused Triton step against the rule's reference.

Every dtype the row claims, odd sizes (1, 1023 and 4097 straddle the 1024-element block; (3, 7, 257)
is not a multiple of anything), an empty tensor, and several shapes in one step; params AND every
state tensor compared after each of 7 steps. Seven, because Adam's bias corrections and Tiger's step
counter must move well past their first-step values, and errors that compound through the states
show by then.
"""
import math

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.master_weights import rebuild_master
from fusedoptim.optim.quantization import FORMATS, QUANTIZED_DTYPES, code_values
from fusedoptim.optim.registry import RULES, Tolerance
from tests.conftest import assert_close, hyperparameters_for_tests, make_params, random_grads

STEPS = 7
KERNEL_RULES = {name: rule for name, rule in RULES.items() if rule.has_kernel}  # a matrix of kernel against oracle
SHAPES = {
    "1": [(1,)],
    "1023": [(1023,)],
    "4097": [(4097,)],
    "3x7x257": [(3, 7, 257)],
    "empty": [(0,)],
    "mixed": [(4097,), (1,), (3, 7, 257), (0,), (33, 64), (1023,)],
}
def variants(rule):
    """The rule's test hyperparameters (each declaration's test_value: an lr of at least 1e-2, weight
    decay, momentum, so that every code path runs and each step moves half-precision params by more
    than their rounding), the same with each boolean option switched, and each declared test variant
    (Tiger's classes of tensors, its schedule and its accumulation gating)."""
    base = hyperparameters_for_tests(rule)
    yield "defaults", base
    for spec in rule.arguments:
        if isinstance(spec.default, bool):
            yield spec.name, {**base, spec.name: not spec.default}
        for other in spec.test_variants:
            yield f"{spec.name}={other}", {**base, spec.name: other}


# Every shape for the test hyperparameters; each boolean variant (a compile-time flag: one more
# kernel variant) over the mixed list, which holds every shape at once.
CASES = [pytest.param(rule, dtype, hyper, shapes, id=f"{rule.name}-{str(dtype)[6:]}-{variant}-{shape_name}")
         for rule in KERNEL_RULES.values() for dtype in rule.dtypes for variant, hyper in variants(rule)
         for shape_name, shapes in SHAPES.items() if variant == "defaults" or shape_name == "mixed"]


def run(rule, impl, shapes, dtype, hyper, state_dtype=None, steps=STEPS, **options):
    params = make_params(shapes, dtype, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyper, impl=impl, state_dtype=state_dtype, **options)
    for step in range(steps):
        for param, grad in zip(params, random_grads(params, seed=step)):
            param.grad = grad
        optimizer.step()
    return params, [optimizer.state[p] for p in params]


# Quantized states: kernel and oracle quantize with the same scheme and the same draws, so their codes
# agree exactly wherever their fp32 values do. Where those differ (another fp32 operation order: exp2
# for β^t, GPU fused multiply-adds), a value that close to a rounding boundary (x.5 to nearest, the
# uniform when stochastic) takes the neighbouring code: codes one step apart, and the params there
# by what one code step moves them. With fp32 params that is an ulp of the state, about 2^-24·255 of
# the elements per state and step (seen: 1 in 5397 after 7 steps); with bf16 params, θ itself may
# differ by a unit of bf16 (its tolerance), which the weight decay carries into the state: 2^-8·255
# per affected element (seen: 5 in 2112). int4's 15 levels make flips rarer (and each moves more).
# Allowed: these fractions of a tensor, none below 1000 or 100 elements.
CODE_FLIP_FRACTION = {torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def assert_codes_close(codes, expected, kind, numel, fraction, what):
    difference = (code_values(codes, kind, numel) - code_values(expected, kind, numel)).abs()
    assert difference.numel() == 0 or difference.max() <= 1, f"{what}: codes differ by {difference.max()} steps"
    differing = int((difference > 0).sum())
    assert differing <= math.floor(fraction * codes.numel()), f"{what}: {differing} codes differ"


def assert_matches_reference(rule, shapes, dtype, hyper, state_dtype=None):
    params, states = run(rule, "triton", shapes, dtype, hyper, state_dtype)
    ref_params, ref_states = run(rule, "reference", shapes, dtype, hyper, state_dtype)
    tolerance = rule.tolerances[dtype]
    kinds = {spec.name: spec.kind for spec in rule.states}
    for i, (param, ref_param, state, ref_state) in enumerate(zip(params, ref_params, states, ref_states)):
        flips = math.floor(rule.sign_flip_fraction * param.numel())
        if state_dtype in QUANTIZED_DTYPES:
            flips += math.floor(CODE_FLIP_FRACTION[dtype] * param.numel())
        assert_close(param, ref_param, tolerance, f"{rule.name} param {i} {tuple(param.shape)}", flips)
        assert state.keys() == ref_state.keys(), f"{rule.name}: state names {list(state)} != {list(ref_state)}"
        for name in state:
            what = f"{rule.name} state {name} of param {i}"
            assert state[name].dtype == ref_state[name].dtype, f"{what}: dtype"
            if name in kinds and state_dtype in QUANTIZED_DTYPES:
                assert state[name].dtype == FORMATS[state_dtype].codes_dtype, f"{what}: {state[name].dtype} codes"
                assert_codes_close(state[name], ref_state[name], kinds[name], param.numel(), CODE_FLIP_FRACTION[dtype],
                                   what)
            else:
                assert_close(state[name], ref_state[name], tolerance, what, flips)


@pytest.mark.parametrize("rule, dtype, hyper, shapes", CASES)
def test_triton_matches_reference(rule, dtype, hyper, shapes):
    assert_matches_reference(rule, shapes, dtype, hyper)


@pytest.mark.parametrize("rule", KERNEL_RULES.values(), ids=KERNEL_RULES.keys())
def test_state_dtype_may_differ_from_param_dtype(rule):
    """bf16 params with fp32 state: the launcher reads and writes each in its own dtype."""
    hyper = dict(variants(rule))["defaults"]
    params, states = run(rule, "triton", SHAPES["mixed"], torch.bfloat16, hyper, state_dtype=torch.float32)
    assert all(state[name].dtype == torch.float32 for state in states for name in rule.state_names(hyper))
    assert_matches_reference(rule, SHAPES["mixed"], torch.bfloat16, hyper, state_dtype=torch.float32)


# Quantized states: every rule × each of its variants with fp32 params in int8, with bf16 params for
# its defaults in int8, and its defaults in int4 (whose codes differ from int8's only in how they are
# stored, which no variant changes), on a short mixed list: 1101 and 33×64 span two and three programs
# and end in a partial quantization block (1101 and 1 in half a byte of int4 codes), with an empty
# tensor beside them.
QUANTIZED_SHAPES = [(1101,), (1,), (0,), (33, 64)]
QUANTIZED_SETTINGS = [(torch.float32, "int8", "every variant"), (torch.bfloat16, "int8", "defaults"),
                      (torch.float32, "int4", "defaults")]
QUANTIZED_CASES = [pytest.param(rule, dtype, hyper, state_dtype,
                                id=f"{rule.name}-{str(dtype)[6:]}-{state_dtype}-{variant}")
                   for dtype, state_dtype, which in QUANTIZED_SETTINGS for rule in KERNEL_RULES.values()
                   for variant, hyper in variants(rule) if which == "every variant" or variant == "defaults"]


@pytest.mark.parametrize("rule, dtype, hyper, state_dtype", QUANTIZED_CASES)
def test_quantized_states_match_the_reference_to_the_code(rule, dtype, hyper, state_dtype):
    assert_matches_reference(rule, QUANTIZED_SHAPES, dtype, hyper, state_dtype)


@pytest.mark.parametrize("rule", KERNEL_RULES.values(), ids=KERNEL_RULES.keys())
def test_update_moves_params(rule):
    """Guards the parity matrix against a vacuous pass: both impls really change params and state."""
    hyper = dict(variants(rule))["defaults"]
    before = make_params(SHAPES["mixed"], torch.float32, rule=rule)
    params, states = run(rule, "triton", SHAPES["mixed"], torch.float32, hyper, steps=2)
    for param, initial, state in zip(params, before, states):
        if param.numel():
            assert (param - initial).abs().max() > 1e-4, f"{rule.name}: a param did not move"
            for name in rule.state_names(hyper):
                assert state[name].abs().max() > 0, f"{rule.name}: state {name} stayed zero"


# Split master weights: every rule, both half dtypes, both widths, on the mixed shapes. fp32 state, so
# that with 32 bits kernel and reference differ only by the order of fp32 operations: the masters,
# rebuilt from θ and the residual, and the states within the row's fp32 tolerance. A 24-bit master is
# a float of 8 more bits than θ, rounded at every step: as θ is compared within the row's tolerance of
# its dtype, the master (and the states it feeds: weight decay, SGDHD's hypergradient) within that
# tolerance over 2^8, or the fp32 one where that is larger.
MASTER_CASES = [pytest.param(rule, dtype, bits, id=f"{rule.name}-{str(dtype)[6:]}-{bits}") for rule in KERNEL_RULES.values()
                for dtype in (torch.bfloat16, torch.float16) if dtype in rule.dtypes for bits in (32, 24)]


@pytest.mark.parametrize("rule, dtype, master_weight_bits", MASTER_CASES)
def test_split_master_weights_match_reference(rule, dtype, master_weight_bits):
    shapes, hyper = SHAPES["mixed"], hyperparameters_for_tests(rule)
    runs = [run(rule, impl, shapes, dtype, hyper, torch.float32, master_weight_bits=master_weight_bits)
            for impl in ("triton", "reference")]
    fp32, half = rule.tolerances[torch.float32], rule.tolerances[dtype]
    tolerance = fp32 if master_weight_bits == 32 else Tolerance(max(fp32.atol, half.atol / 2**8),
                                                                 max(fp32.rtol, half.rtol / 2**8))
    for i, ((param, state), (ref_param, ref_state)) in enumerate(zip(zip(*runs[0]), zip(*runs[1]))):
        flips = math.floor(rule.sign_flip_fraction * param.numel())
        what = f"{rule.name} {master_weight_bits}-bit master of param {i} {tuple(param.shape)}"
        assert state.keys() == ref_state.keys() and "master_residual" in state, what
        assert_close(rebuild_master(param, state["master_residual"]),
                     rebuild_master(ref_param, ref_state["master_residual"]), tolerance, what, flips)
        assert_close(param, ref_param, half, f"{what}: θ", flips)
        for name in rule.state_names(hyper):
            assert_close(state[name], ref_state[name], tolerance, f"{what}: state {name}", flips)
