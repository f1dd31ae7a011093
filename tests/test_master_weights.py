"""Split master weights (master_weight_bits=32 | 24): the fp32 master kept as the 16-bit param θ plus
an int16 or int8 residual (kernels.master_weights). 32 bits step exactly as fp32 params fed the same
gradients; 24 bits keep the master to 1/256 of θ's ulp. The parity, bad-input and GradScaler suites
run over the master widths too (tests/test_parity.py, test_bad_input.py, test_amp.py)."""
import copy

import pytest
import torch
import triton
import triton.language as tl

from fusedoptim import optim
from fusedoptim.kernels.master_weights import RESIDUAL_DTYPES
from fusedoptim.kernels.master_weights import rebuild_master as kernel_rebuild, split_master as kernel_split
from fusedoptim.optim.master_weights import rebuild_master, split_master
from fusedoptim.optim.registry import RULES
from tests.conftest import DEVICE, hyperparameters_for_tests, impls_of, make_params, random_grads

HALF = [torch.bfloat16, torch.float16]
SHAPES = [(1023,), (3, 7, 5), (1,)]
STEPS = 5  # past Adam's first bias corrections and Tiger's first schedule points; each step splits again


def bits(value):
    return value.view(torch.int32).long() & 0xFFFFFFFF


def stepped(rule, dtype, impl, steps=STEPS, **options):
    """Params of ``dtype`` and their optimizer after ``steps`` steps of gradients rounded to bf16 (the
    same values in either dtype), with fp32 state."""
    params = make_params(SHAPES, dtype, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyperparameters_for_tests(rule), impl=impl,
                                          state_dtype=torch.float32, **options)
    for step in range(steps):
        for param, grad in zip(params, random_grads(params, seed=step, rule=rule)):
            param.grad = grad.to(torch.bfloat16).to(dtype)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("rule, impl", [pytest.param(rule, impl, id=f"{rule.name}-{impl}") for rule in RULES.values()
                                        for impl in impls_of(rule)])
def test_32_bit_masters_step_as_fp32_params_bit_for_bit(rule, impl):
    """bf16 params with 32-bit masters against fp32 params started from the same values: the master,
    rebuilt from θ and its residual, equals the fp32 param bit for bit after every step's split, every
    state too, and θ is the master rounded to nearest with ties away from zero, on the bits."""
    params, optimizer = stepped(rule, torch.bfloat16, impl, master_weight_bits=32)
    full_params = [p.float() for p in make_params(SHAPES, torch.bfloat16, rule=rule)]
    full = getattr(optim, rule.name)(full_params, **hyperparameters_for_tests(rule), impl=impl)
    for step in range(STEPS):
        for param, grad in zip(full_params, random_grads(full_params, seed=step, rule=rule)):
            param.grad = grad.to(torch.bfloat16).float()
        full.step()
    for i, (param, full_param) in enumerate(zip(params, full_params)):
        state, full_state = optimizer.state[param], full.state[full_param]
        master = rebuild_master(param, state["master_residual"])
        assert torch.equal(bits(master), bits(full_param)), f"{rule.name} ({impl}): master {i} != the fp32 param"
        assert not torch.equal(master, param.float()), f"{rule.name}: the residual of param {i} holds nothing"
        expected_theta = ((bits(full_param) + 0x8000) >> 16).to(torch.int32)
        assert torch.equal(param.view(torch.int16).int() & 0xFFFF, expected_theta), f"{rule.name}: θ {i}"
        for name in full_state:
            assert torch.equal(state[name], full_state[name]), f"{rule.name} ({impl}): state {name} of param {i}"


@triton.jit
def _split_and_rebuild_kernel(master_ptr, param_ptr, residual_ptr, rebuilt_ptr, numel, DTYPE: tl.constexpr,
                              MASTER_BITS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < numel
    param, residual = kernel_split(tl.load(master_ptr + offsets, mask=mask), DTYPE, MASTER_BITS)
    tl.store(param_ptr + offsets, param, mask=mask)
    tl.store(residual_ptr + offsets, residual, mask=mask)
    tl.store(rebuilt_ptr + offsets, kernel_rebuild(param, residual, DTYPE, MASTER_BITS), mask=mask)


def kernel_split_and_rebuild(master, dtype, master_weight_bits):
    param = torch.empty_like(master, dtype=dtype)
    residual = torch.empty_like(master, dtype=RESIDUAL_DTYPES[master_weight_bits])
    rebuilt = torch.empty_like(master)
    triton_dtype = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    _split_and_rebuild_kernel[(triton.cdiv(master.numel(), 1024),)](
        master, param, residual, rebuilt, master.numel(), DTYPE=triton_dtype, MASTER_BITS=master_weight_bits,
        BLOCK_SIZE=1024)
    return param, residual, rebuilt


def every_kind_of_master():
    """Random bit patterns (every exponent: subnormals, NaNs, ±inf, the largest finite values), values
    on each side of half an ulp, ±0, and the edges named in fusedoptim/kernels/master_weights.py."""
    generator = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-2**31, 2**31, (8192,), generator=generator, dtype=torch.int64).int().view(torch.float32)
    ordinary = torch.randn(4096, generator=generator) * torch.logspace(-8, 4, 4096)
    edges = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.39e38, -3.4e38, 65504.0, 65519.0,
                          65520.0, -65520.0, 2.0**-14, 2.0**-17, 2.0**-17 * 0.75, 2.0**-24, 1e-30, -1e-30,
                          1 + 2.0**-8, 1 + 3 * 2.0**-9, 1 - 2.0**-24, -(1 + 2.0**-8)])
    return torch.cat([random_bits, ordinary, edges]).to(DEVICE)


@pytest.mark.parametrize("master_weight_bits", [32, 24])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_the_kernel_splits_and_rebuilds_as_the_reference(dtype, master_weight_bits):
    master = every_kind_of_master()
    param, residual, rebuilt = kernel_split_and_rebuild(master, dtype, master_weight_bits)
    expected_param, expected_residual = split_master(master.cpu(), dtype, RESIDUAL_DTYPES[master_weight_bits])
    expected_rebuilt = rebuild_master(expected_param, expected_residual)
    nan = master.cpu().isnan()  # NaN where NaN; its payload is the conversion's (numpy's under the interpreter)
    assert torch.equal(param.cpu().isnan(), nan) and torch.equal(rebuilt.cpu().isnan(), nan)
    assert torch.equal(param.cpu()[~nan].view(torch.int16), expected_param[~nan].view(torch.int16))
    assert torch.equal(residual.cpu(), expected_residual)
    assert torch.equal(bits(rebuilt.cpu()[~nan]), bits(expected_rebuilt[~nan]))


@pytest.mark.parametrize("master_weight_bits", [32, 24])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_what_the_split_keeps(dtype, master_weight_bits):
    """32 bits: exact wherever θ is finite (fp16: for |master| ≥ 2^-17, below which the residual
    saturates and the master moves toward θ, never farther from it than θ); 24 bits: within 1/256 of
    θ's ulp. θ is the master to nearest. NaN stays NaN; a master whose θ is ±inf becomes ±inf."""
    master = every_kind_of_master().cpu()
    param, residual = split_master(master, dtype, RESIDUAL_DTYPES[master_weight_bits])
    rebuilt, theta = rebuild_master(param, residual).double(), param.double()
    master = master.double()
    assert torch.equal(rebuilt.isnan(), master.isnan()) and torch.equal(theta.isnan(), master.isnan())
    finite = theta.isfinite()
    assert torch.allclose(rebuilt[~finite], theta[~finite], rtol=0, atol=0, equal_nan=True), "±inf θ: that inf"
    assert ((master[finite] - theta[finite]).abs() <= (master[finite] - master[finite].to(dtype).double()).abs()).all()
    ulp = torch.where(theta.abs() > 0, theta.abs(), torch.finfo(dtype).tiny) * torch.finfo(dtype).eps
    ulp = torch.maximum(ulp, torch.tensor(torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps))
    error, gap = (rebuilt - master).abs(), (theta - master).abs()
    if master_weight_bits == 32:
        exact = finite & ((dtype == torch.bfloat16) | (master.abs() >= 2.0**-17))
        assert torch.equal(rebuilt[exact], master[exact]), "32-bit masters must be exact"
        assert exact.sum() > 4000 and (dtype == torch.bfloat16 or (~exact & finite).any()), "edges not exercised"
        assert (error[finite] <= gap[finite]).all(), "the rebuilt master is farther from the master than θ"
    else:
        normal = finite & (theta.abs() >= torch.finfo(dtype).smallest_normal)
        # Within 1/256 of θ's ulp; θ's ulp is the spacing above |θ|, halved below a power of two.
        assert (error[normal] <= ulp[normal] / 256).all(), (error[normal] / ulp[normal]).max()
        assert (error[normal] > 0).any(), "24 bits cannot be exact everywhere: the test would be vacuous"


@pytest.mark.parametrize("master_weight_bits", [32, 24])
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_a_checkpoint_resumes_bit_for_bit_and_loads_by_width(impl, master_weight_bits):
    """save → load → resume equals the uninterrupted run, θ and residual bit for bit; an optimizer
    without masters drops the residual (θ is the master), another width refuses it before any change.
    24 bits' residual is int8 without scales: a checkpoint must not take it for quantized codes."""
    rule, other = RULES["AdamW"], {32: 24, 24: 32}[master_weight_bits]
    params, optimizer = stepped(rule, torch.bfloat16, impl, steps=6, master_weight_bits=master_weight_bits)
    first_half, saved = stepped(rule, torch.bfloat16, impl, steps=3, master_weight_bits=master_weight_bits)
    checkpoint = copy.deepcopy(saved.state_dict())
    resumed_params = [p.detach().clone() for p in first_half]
    resumed = optim.AdamW(resumed_params, **hyperparameters_for_tests(rule), impl=impl, state_dtype=torch.float32,
                          master_weight_bits=master_weight_bits)
    resumed.load_state_dict(checkpoint)
    copied_params, copied = copy.deepcopy((resumed_params, resumed))
    assert copied.master_weight_bits == master_weight_bits
    assert f"master_weight_bits={master_weight_bits}" in repr(copied)
    for step in range(3, 6):
        for run_params, run in ((resumed_params, resumed), (copied_params, copied)):
            for param, grad in zip(run_params, random_grads(run_params, seed=step)):
                param.grad = grad.to(torch.bfloat16)
            run.step()
    for run_params, run in ((resumed_params, resumed), (copied_params, copied)):
        for param, resumed_param in zip(params, run_params):
            assert torch.equal(param, resumed_param)
            assert torch.equal(optimizer.state[param]["master_residual"], run.state[resumed_param]["master_residual"])

    plain = optim.AdamW([p.detach().clone() for p in first_half], impl=impl, state_dtype=torch.float32)
    plain.load_state_dict(checkpoint)
    assert all("master_residual" not in state and "exp_avg" in state for state in plain.state.values())
    narrow = optim.AdamW([p.detach().clone() for p in first_half], impl=impl, master_weight_bits=other)
    saved_dtype, other_dtype = RESIDUAL_DTYPES[master_weight_bits], RESIDUAL_DTYPES[other]
    with pytest.raises(ValueError, match=f"'master_residual' of {saved_dtype}, but master_weight_bits={other} "
                                         f"keeps {other_dtype}"):
        narrow.load_state_dict(checkpoint)
    assert not narrow.state


@pytest.mark.parametrize("master_weight_bits", [32, 24])
@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if rule.has_kernel], ids=lambda rule: rule.name)
def test_measured_state_bytes_equal_the_model_with_the_residual(rule, master_weight_bits):
    params, optimizer = stepped(rule, torch.bfloat16, "triton", steps=1, master_weight_bits=master_weight_bits)
    group = optimizer.param_groups[0]
    measured = sum(value.numel() * value.element_size() for state in optimizer.state.values()
                   for value in state.values())
    numels = [p.numel() for p in params]
    assert measured == rule.state_bytes(group, numels, torch.bfloat16, torch.float32, master_weight_bits)
    residual_bytes = master_weight_bits // 8 - 2  # bf16's 2 bytes and the residual's make the master's
    assert measured == rule.state_bytes(group, numels, torch.bfloat16, torch.float32) + residual_bytes * sum(numels)
    # One step reads and writes the residual beside θ; a micro-step that leaves θ alone touches neither.
    assert (rule.bytes_per_param(group, torch.bfloat16, torch.float32, master_weight_bits=master_weight_bits)
            == rule.bytes_per_param(group, torch.bfloat16, torch.float32) + 2 * residual_bytes)
    assert (rule.bytes_per_param(group, torch.bfloat16, moves_param=False, master_weight_bits=master_weight_bits)
            == rule.bytes_per_param(group, torch.bfloat16, moves_param=False))
