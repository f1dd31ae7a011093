"""fo.Adafactor with an int8 or int4 variance (state_dtype=): the fused impl against the reference to
the code, both against fp32 Adafactor, a state_dict round trip, and FSDP2 refused.

The shapes are test_adafactor's (a matrix and a stack, whose row_var/col_var stay in the param's
dtype, a 33-vector, a 1-element vector, a 0-d scalar) and a 300-vector, over two int8 blocks (256)
and three int4 blocks (128). Five steps, as test_adafactor: the first sets the variance to g²
(weight 1), the next ones take both lerp branches (t^-0.8 ≥ 0.5 at t = 2, below from t = 3), each
quantized and read back.
"""
import copy

import pytest
import torch

import fusedoptim as fo
from fusedoptim.optim.quantization import FORMATS, code_values

STEPS = 5
SHAPES = [(17, 33), (3, 7, 5), (33,), (1,), (), (300,)]
LR = 0.01
KIND = "nonnegative"
# |θ_quantized − θ_fp32| of a vector over its largest move max|θ_fp32 − θ_0| in STEPS steps: seen 0.005
# (int8) and 0.053 (int4), either impl; bounds four times that.
FRACTION_OF_TRAVEL = {"int8": 0.02, "int4": 0.2}


def run(impl, state_dtype, dtype=torch.float32, steps=STEPS, shapes=SHAPES):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]
    optimizer = fo.Adafactor(params, lr=LR, impl=impl, state_dtype=state_dtype)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(dtype)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_fused_codes_equal_the_reference_codes(state_dtype, dtype):
    """Both impls quantize the same fp32 variance with the same scheme, round to nearest: the same codes
    and scales; the params as test_adafactor allows the fused ones (bf16: a unit in the last place)."""
    params, fused = run("triton", state_dtype, dtype)
    ref_params, reference = run("reference", state_dtype, dtype)
    for i, (p, q) in enumerate(zip(params, ref_params)):
        state, ref_state = fused.state[p], reference.state[q]
        if p.dim() > 1:
            assert set(state) == {"step", "row_var", "col_var"}
            assert state["row_var"].dtype == state["col_var"].dtype == dtype  # not quantized: O(n + m)
            continue
        assert set(state) == {"step", "variance", "variance_scale"}
        assert state["variance"].dtype == FORMATS[state_dtype].codes_dtype
        codes = code_values(state["variance"], KIND, p.numel())
        ref_codes = code_values(ref_state["variance"], KIND, p.numel())
        assert torch.equal(codes, ref_codes), f"param {i}: {int((codes != ref_codes).sum())} codes differ"
        torch.testing.assert_close(state["variance_scale"], ref_state["variance_scale"], rtol=1.3e-6, atol=0)
    for i, (p, q) in enumerate(zip(params, ref_params)):
        tolerance = dict(rtol=2 ** -7, atol=2 ** -7) if dtype == torch.bfloat16 else {}
        torch.testing.assert_close(p.detach(), q.detach(), **tolerance, msg=lambda m: f"param {i}: {m}")


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_quantized_variance_stays_near_fp32_adafactor(state_dtype, impl):
    generator = torch.Generator().manual_seed(0)
    starts = [torch.randn(shape, generator=generator) for shape in SHAPES]
    params, _ = run(impl, state_dtype)
    exact, _ = run("reference", None)
    for i, (p, q, start) in enumerate(zip(params, exact, starts)):
        travel = (q - start).abs().max().item()
        error = (p - q).abs().max().item()
        if p.dim() > 1:  # its statistics are not quantized: fp32 Adafactor's, as test_adafactor allows the impl
            torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m: f"param {i}: {m}")
        else:
            assert error <= FRACTION_OF_TRAVEL[state_dtype] * travel, f"param {i}: {error} of {travel}"


@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_state_dict_round_trip_keeps_codes_and_fp32_scales(state_dtype):
    """bf16 params: torch's load casts floating states to the param's dtype, which would round the scales."""
    params, optimizer = run("triton", state_dtype, torch.bfloat16, steps=2)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    loaded = fo.Adafactor(copies, lr=LR, impl="triton", state_dtype=state_dtype)
    # A copy, as a checkpoint is: torch's load keeps the saved "step" tensors themselves, which both
    # optimizers would then count.
    loaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for p, q in zip(params, copies):
        for name, value in optimizer.state[p].items():
            assert loaded.state[q][name].dtype == value.dtype, name
            assert torch.equal(loaded.state[q][name], value), name
    for p, q in zip(params, copies):
        p.grad = q.grad = torch.ones_like(p)
    optimizer.step()
    loaded.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
        for name, value in optimizer.state[p].items():
            assert torch.equal(loaded.state[q][name], value), name


def test_an_unknown_state_dtype_is_refused_naming_it():
    with pytest.raises(ValueError, match="state_dtype='int2'"):
        fo.Adafactor([torch.nn.Parameter(torch.zeros(2))], state_dtype="int2")
