"""fo.Muon with an int8 or int4 momentum buffer (state_dtype=): the fused impl against the reference to
the code, both against fp32 Muon, and a state_dict round trip.

The shapes are test_muon's (wide, tall, square over two tiles, a single row). Three steps: the first
quantizes a buffer of (1 − μ)g, the next two carry the quantization error through the momentum.
"""
import pytest
import torch

import fusedoptim as fo
from fusedoptim.optim.quantization import FORMATS, code_values
from fusedoptim.optim.reference.muon import adjusted_lr

STEPS = 3
SHAPES = [(17, 33), (33, 17), (64, 64), (1, 8)]
LR = 0.02
# |θ_quantized − θ_fp32| as a fraction of γ'·steps, the farthest Newton–Schulz's updates (singular values
# near 1) move an element: seen 0.005 (int8) and 0.026 (int4), bounds four times that.
FRACTION_OF_TRAVEL = {"int8": 0.02, "int4": 0.1}
KIND = "signed"


def run(impl, state_dtype, dtype=torch.float32, steps=STEPS):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in SHAPES]
    optimizer = fo.Muon(params, lr=LR, impl=impl, state_dtype=state_dtype)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(dtype)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_fused_codes_equal_the_reference_codes(state_dtype, dtype):
    """Both impls quantize the same fp32 momentum with the same scheme, round to nearest: the same codes
    and scales (seen: every one equal); the params as test_muon allows the fused ones (bf16: a unit)."""
    params, fused = run("triton", state_dtype, dtype)
    ref_params, reference = run("reference", state_dtype, dtype)
    for i, (p, q) in enumerate(zip(params, ref_params)):
        state, ref_state = fused.state[p], reference.state[q]
        assert set(state) == {"momentum_buffer", "momentum_buffer_scale"}
        assert state["momentum_buffer"].dtype == FORMATS[state_dtype].codes_dtype
        codes = code_values(state["momentum_buffer"], KIND, p.numel())
        ref_codes = code_values(ref_state["momentum_buffer"], KIND, p.numel())
        assert torch.equal(codes, ref_codes), f"param {i}: {int((codes != ref_codes).sum())} codes differ"
        torch.testing.assert_close(state["momentum_buffer_scale"], ref_state["momentum_buffer_scale"],
                                   rtol=1.3e-6, atol=0)
        atol = 2 ** -6 * 4 if dtype == torch.bfloat16 else 1e-5 + STEPS * 2 ** -6 * adjusted_lr(LR, None, p.shape)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=atol, msg=lambda m: f"param {i}: {m}")


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_quantized_momentum_stays_near_fp32_muon(state_dtype, impl):
    params, _ = run(impl, state_dtype)
    exact, _ = run("reference", None)
    for i, (p, q) in enumerate(zip(params, exact)):
        travel = STEPS * adjusted_lr(LR, None, p.shape)
        error = (p - q).abs().max().item()
        assert error <= FRACTION_OF_TRAVEL[state_dtype] * travel, f"param {i}: {error} of {travel}"


@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_state_dict_round_trip_keeps_codes_and_fp32_scales(state_dtype):
    """bf16 params: torch's load casts floating states to the param's dtype, which would round the scales."""
    params, optimizer = run("triton", state_dtype, torch.bfloat16, steps=2)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    loaded = fo.Muon(copies, lr=LR, state_dtype=state_dtype)
    loaded.load_state_dict(optimizer.state_dict())
    for p, q in zip(params, copies):
        for name in ("momentum_buffer", "momentum_buffer_scale"):
            assert loaded.state[q][name].dtype == optimizer.state[p][name].dtype
            assert torch.equal(loaded.state[q][name], optimizer.state[p][name]), name
    for p, q in zip(params, copies):
        p.grad = q.grad = torch.ones_like(p)
    optimizer.step()
    loaded.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
        assert torch.equal(optimizer.state[p]["momentum_buffer"], loaded.state[q]["momentum_buffer"])


def test_an_unknown_state_dtype_is_refused_naming_it():
    with pytest.raises(ValueError, match="state_dtype='int2'"):
        fo.Muon([torch.nn.Parameter(torch.zeros(2, 2))], state_dtype="int2")
