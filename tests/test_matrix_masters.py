"""Split master weights (``master_weight_bits=32 | 24``, docs/mixed-precision.md) for every rule of the
matrix shape: the apply steps θ's fp32 master (θ and its residual), the momentum and the transform read
as before. The fused step against the oracle on the master, torch.optim.Muon on fp32 params as the
third party (momentum 0 makes the bf16 and fp32 momenta alike, so a 32-bit master must equal its fp32
param bit for bit), a 24-bit master tracking fp32 where plain bf16 stalls, checkpoints and bad values.

Tolerances: the momentum is the same element-wise arithmetic in both impls (bit for bit); the
master differs by the row's ``transform_atol`` of O, times γ', per step (tests/test_matrix_rules.py),
and a 24-bit one by a unit of its residual more (1/256 of θ's unit, at most |θ|·2^-15).
"""
import copy

import pytest
import torch

import fusedoptim as fo
from fusedoptim.optim.master_weights import rebuild_master
from tests.test_matrix_rules import FP32, MATRIX_RULES, SHAPES, by_name

STEPS = 2


def run(rule, impl, master_weight_bits, steps=STEPS, dtype=torch.bfloat16, **options):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in SHAPES]
    optimizer = rule.optimizer(params, impl=impl, master_weight_bits=master_weight_bits, **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(dtype)
        optimizer.step()
    return params, optimizer


@by_name(MATRIX_RULES)
@pytest.mark.parametrize("master_weight_bits", [32, 24])
def test_fused_masters_match_the_oracle(rule, master_weight_bits):
    fused_params, fused = run(rule, "triton", master_weight_bits)
    params, reference = run(rule, "reference", master_weight_bits)
    group = reference.param_groups[0]
    measured = sum(value.numel() * value.element_size() for state in fused.state.values() for value in state.values())
    assert measured == rule.state_bytes(group, SHAPES, torch.bfloat16, master_weight_bits=master_weight_bits)
    for i, (p, q) in enumerate(zip(fused_params, params)):
        residual = fused.state[p]["master_residual"]
        assert residual.dtype == {32: torch.int16, 24: torch.int8}[master_weight_bits] and residual.any(), i
        assert torch.equal(fused.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"]), i
        atol = FP32["atol"] + STEPS * rule.transform_atol * rule.adjusted_lr(group["lr"], group, p.shape)
        # 24 bits: masters a little apart may also round to neighbouring residuals, 1/256 of θ's unit apart.
        rtol = FP32["rtol"] if master_weight_bits == 32 else 2.0 ** -15
        torch.testing.assert_close(rebuild_master(p, residual), rebuild_master(q, reference.state[q]["master_residual"]),
                                   rtol=rtol, atol=atol, msg=lambda m: f"{rule.name}: master {i}: {m}")


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_32_bit_masters_step_as_torch_muon_on_fp32_params(impl):
    """Momentum 0: B = g exactly in either dtype, and Newton–Schulz reads bf16 either way, so torch.optim.Muon
    on fp32 params fed the same (bf16-valued) gradients steps the very master: bit for bit by the oracle,
    within the transform's tolerance by the kernels."""
    params, optimizer = run(fo.Muon.rule, impl, 32, momentum=0.0, lr=0.02)
    generator = torch.Generator().manual_seed(0)
    full = [torch.nn.Parameter(torch.randn(shape, generator=generator).bfloat16().float()) for shape in SHAPES]
    twin = torch.optim.Muon(full, momentum=0.0, lr=0.02)
    for _ in range(STEPS):
        for p in full:
            p.grad = torch.randn(p.shape, generator=generator).bfloat16().float()
        twin.step()
    for i, (p, q) in enumerate(zip(params, full)):
        master = rebuild_master(p, optimizer.state[p]["master_residual"])
        assert not torch.equal(master, p.float()), f"the residual of param {i} holds nothing"
        if impl == "reference":
            assert torch.equal(master, q.detach()), i
        else:
            atol = STEPS * fo.Muon.rule.transform_atol * 0.02 * max(1, SHAPES[i][0] / SHAPES[i][1]) ** 0.5
            torch.testing.assert_close(master, q.detach(), rtol=FP32["rtol"], atol=FP32["atol"] + atol)


def test_a_24_bit_master_tracks_fp32_where_bf16_stalls():
    """Many small steps (γ'·O below half a bf16 unit of θ): plain bf16 θ hardly moves, a 24-bit master
    follows torch.optim.Muon on fp32 params (1/256 of θ's unit): measured, mean |error| 3.1e-3 against
    3.6e-5, 88x closer (2026-12-07); asserted 30x."""
    steps, lr, shape = 25, 1e-3, (8, 16)

    def trained(make):
        generator = torch.Generator().manual_seed(3)
        param = torch.nn.Parameter(torch.randn(shape, generator=generator).bfloat16())
        param, optimizer = make(param)
        for _ in range(steps):
            param.grad = torch.randn(shape, generator=generator).bfloat16().to(param.dtype)
            optimizer.step()
        return param, optimizer

    def fp32_twin(param):
        param = torch.nn.Parameter(param.detach().float())
        return param, torch.optim.Muon([param], lr=lr)

    full, _ = trained(fp32_twin)
    # The oracle's split (optim.master_weights, the kernel's twin, test_master_weights.py): 2 × 25 fused
    # steps would take half a minute under the interpreter.
    plain, _ = trained(lambda p: (p, fo.Muon([p], lr=lr, impl="reference")))
    mastered, optimizer = trained(lambda p: (p, fo.Muon([p], lr=lr, impl="reference", master_weight_bits=24)))
    master = rebuild_master(mastered, optimizer.state[mastered]["master_residual"])
    plain_error = (plain.float() - full.detach()).abs().mean()
    master_error = (master - full.detach()).abs().mean()
    assert plain_error > 30 * master_error, (plain_error.item(), master_error.item())


@by_name(MATRIX_RULES)
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_a_checkpoint_resumes_bit_for_bit_and_loads_by_width(rule, impl):
    """save → load → a step equals the uninterrupted step, θ and residual; an optimizer without masters
    drops the residual, another width refuses it before any change (the registry's words)."""
    params, optimizer = run(rule, impl, 24, steps=1)
    checkpoint = copy.deepcopy(optimizer.state_dict())
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = rule.optimizer(copies, impl=impl, master_weight_bits=24)
    resumed.load_state_dict(copy.deepcopy(checkpoint))
    assert all(resumed.state[q]["master_residual"].dtype == torch.int8 for q in copies)
    resumed = copy.deepcopy(resumed)
    copies = list(resumed.param_groups[0]["params"])
    generator = torch.Generator().manual_seed(2)
    for p, q in zip(params, copies):
        p.grad = torch.randn(p.shape, generator=generator).bfloat16()
        q.grad = p.grad.clone()
    optimizer.step()
    resumed.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q) and torch.equal(optimizer.state[p]["master_residual"], resumed.state[q]["master_residual"])
    plain = rule.optimizer([p.detach().clone() for p in params], impl=impl)
    plain.load_state_dict(copy.deepcopy(checkpoint))
    assert all("master_residual" not in state and "momentum_buffer" in state for state in plain.state.values())
    wider = rule.optimizer([p.detach().clone() for p in params], impl=impl, master_weight_bits=32)
    with pytest.raises(ValueError, match="'master_residual' of torch.int8, but master_weight_bits=32 keeps torch.int16"):
        wider.load_state_dict(checkpoint)
    assert not wider.state


@by_name(MATRIX_RULES)
def test_bad_masters_are_refused_before_any_change(rule):
    """The registry's values and words: a width other than 32 or 24, stochastic rounding beside it (at
    construction), an fp32 param (at the step, naming it, before any group changes)."""
    param = torch.nn.Parameter(torch.randn(3, 4).bfloat16())
    for bits in (16, True, "32"):
        with pytest.raises(ValueError, match=rf"{rule.name}: master_weight_bits={bits!r} must be None"):
            rule.optimizer([param], master_weight_bits=bits)
    with pytest.raises(ValueError, match="master_weight_bits=24 keeps in θ's residual"):
        rule.optimizer([param], master_weight_bits=24, stochastic_rounding=True)
    full = torch.nn.Parameter(torch.randn(5, 3))
    param.grad, full.grad = torch.randn(3, 4).bfloat16(), torch.randn(5, 3)
    before = param.detach().clone()
    optimizer = rule.optimizer([{"params": [param]}, {"params": [full]}], master_weight_bits=32, impl="triton")
    with pytest.raises(TypeError, match=r"param 0 is torch.float32, and master_weight_bits=32 completes bf16 or fp16"):
        optimizer.step()
    assert torch.equal(param, before) and not optimizer.state
