"""fo.Muon against torch.optim.Muon: params and momentum buffers after each of several steps, on
matrices of odd sizes (wide, tall, square, a single row, two of one shape that share a
Newton–Schulz stack), every option, both impls (the fused one under the Triton interpreter on the
CPU); the Newton–Schulz kernel alone against the oracle's; torch's optim_db inputs and error inputs;
state_dicts both ways; a non-matrix param refused before anything changes.

Tolerances. The reference runs torch's ops in torch's order: bit for bit. The fused momentum is
fp32 element-wise arithmetic in torch's lerp formula: torch's fp32 tolerance. Newton–Schulz runs in
bf16, as torch's; our tiles sum the products in another order than torch's CPU matmul, so an element
now and then rounds to the neighbouring bf16 value, and five iterations carry that on: elements of O
(magnitude ≤ ~1) differ by up to a few bf16 steps (seen: 0.006 on 40×40). NS_ATOL = 2⁻⁶ allows 4 steps
of 2⁻⁸ at magnitude 1. A param moves by γ'·O a step, so it may differ by γ'·NS_ATOL per step.
"""
import inspect

import pytest
import torch

import fusedoptim as fo
from fusedoptim.kernels.newton_schulz import BLOCK, newton_schulz, symmetric_product, upper_tiles
from fusedoptim.optim.muon import Muon
from fusedoptim.optim.reference.muon import adjusted_lr
from fusedoptim.optim.reference.muon import newton_schulz as reference_newton_schulz
from tests.optim_db import (DIRECTIONS, assert_raises_as_torch, error_id, error_inputs, handed_across, info_of,
                            optim_inputs)

IMPLS = ("reference", "triton")
STEPS = 3  # the first step starts the momentum buffer from zero; the next two carry it
SHAPES = [(17, 33), (33, 17), (64, 64), (1, 8), (17, 33)]  # wide, tall, square (two tiles a side), a row; a pair
NS_ATOL = 2 ** -6
FP32 = dict(rtol=1.3e-6, atol=1e-5)  # torch's default fp32 tolerance
EXACT = dict(rtol=0, atol=0)
COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def twins(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=generator) for shape in shapes]
    return ([torch.nn.Parameter(v.clone()) for v in values], [torch.nn.Parameter(v.clone()) for v in values],
            generator)


def param_tolerance(impl, group, shape, steps):
    if impl == "reference":
        return EXACT
    return dict(rtol=FP32["rtol"], atol=FP32["atol"] + steps * NS_ATOL * adjusted_lr(float(group["lr"]),
                                                                                      group["adjust_lr_fn"], shape))


def assert_same(ours, theirs, ours_params, theirs_params, impl, step, what):
    for i, (p, q) in enumerate(zip(ours_params, theirs_params)):
        tolerance = param_tolerance(impl, theirs.param_groups[0], q.shape, step)
        torch.testing.assert_close(p.detach(), q.detach(), **tolerance, msg=lambda m: f"{what}: param {i}: {m}")
        assert set(ours.state[p]) == set(theirs.state[q]) == {"momentum_buffer"}
        torch.testing.assert_close(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"],
                                   **(EXACT if impl == "reference" else FP32),
                                   msg=lambda m: f"{what}: param {i} momentum_buffer: {m}")


def step_both(ours, theirs, ours_params, theirs_params, generator, impl, steps=STEPS, first=1):
    for step in range(first, first + steps):
        for p, q in zip(ours_params, theirs_params):
            grad = torch.randn(p.shape, generator=generator)
            p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        assert_same(ours, theirs, ours_params, theirs_params, impl, step, f"step {step}")


OPTIONS = {
    "defaults": dict(),
    "no-nesterov-no-decay": dict(nesterov=False, weight_decay=0.0),
    "original-lr-3-steps": dict(adjust_lr_fn="original", ns_steps=3),
    "match-rms-adamw": dict(adjust_lr_fn="match_rms_adamw", lr=0.02, weight_decay=0.05),
    "no-momentum-no-iteration": dict(momentum=0.0, ns_steps=0),  # U = g; O is the normalized gradient
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_steps_like_torch(options, impl):
    ours_params, theirs_params, generator = twins(SHAPES)
    ours = fo.Muon(ours_params, impl=impl, **options)
    theirs = torch.optim.Muon(theirs_params, **options)
    assert ours.chosen_impl(ours_params) == impl
    step_both(ours, theirs, ours_params, theirs_params, generator, impl)


@pytest.mark.parametrize("shape", [(3, 17, 33), (2, 33, 17), (1, 64, 64), (2, 70, 40), (1, 1, 8), (1, 8, 1)],
                         ids=["wide", "tall", "square", "tall-two-tiles", "row", "column"])
@pytest.mark.parametrize("steps", [5, 0])
def test_newton_schulz_kernel_matches_the_oracle(shape, steps):
    """One stack of same-shape matrices through the kernels against the oracle, matrix by matrix. With
    no iteration (the normalization alone) nothing is summed in another order: equal exactly."""
    stack = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = torch.empty_like(stack)
    newton_schulz(stack, out, COEFFICIENTS, steps, 1e-7)
    expected = torch.stack([reference_newton_schulz(m, COEFFICIENTS, steps, 1e-7).float() for m in stack])
    torch.testing.assert_close(out, expected, **(EXACT if steps == 0 else dict(rtol=0, atol=NS_ATOL)))


def test_the_gram_product_computes_the_upper_tiles_and_mirrors_them():
    """Three tiles a side: 6 of 9 computed; the result is X·Xᵀ, exactly symmetric."""
    x = torch.randn(2, 3 * BLOCK - 5, 40, generator=torch.Generator().manual_seed(2)).bfloat16()
    tiles = upper_tiles(3, x.device)
    assert tiles.tolist() == [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]]
    out = torch.full((2, x.shape[1], x.shape[1]), float("nan"), dtype=torch.bfloat16)
    symmetric_product(x, out)
    assert torch.equal(out, out.mT), "the mirrored tiles are not the computed ones transposed"
    torch.testing.assert_close(out.float(), (x @ x.mT).float(), rtol=0, atol=NS_ATOL)


def test_nesterov_momentum_buffer_and_update_are_torchs_on_bf16_params():
    """bf16 params: torch keeps the buffer in bf16 and rounds each op; the kernels compute in fp32 and
    round once, so they agree to a bf16 step."""
    ours_params, theirs_params, generator = twins([(17, 33), (33, 17)])
    ours_params = [torch.nn.Parameter(p.detach().bfloat16()) for p in ours_params]
    theirs_params = [torch.nn.Parameter(p.detach().bfloat16()) for p in theirs_params]
    ours, theirs = fo.Muon(ours_params, impl="triton"), torch.optim.Muon(theirs_params)
    for _ in range(2):
        for p, q in zip(ours_params, theirs_params):
            p.grad = q.grad = torch.randn(p.shape, generator=generator).bfloat16()
        ours.step()
        theirs.step()
    for p, q in zip(ours_params, theirs_params):
        torch.testing.assert_close(p, q, rtol=2 ** -7, atol=1e-5)
        torch.testing.assert_close(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"],
                                   rtol=2 ** -7, atol=1e-5)


INFO = info_of(torch.optim.Muon)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("optim_input", optim_inputs(INFO), ids=lambda optim_input: optim_input.desc)
def test_optim_db_input_steps_like_torch(optim_input, impl):
    """torch's own Muon inputs for 7 steps, as torch's correctness tests step them."""
    ours_params, theirs_params, generator = twins([(3, 5), (5, 3), (1, 1)])
    ours = fo.Muon(ours_params, impl=impl, **optim_input.kwargs)
    theirs = torch.optim.Muon(theirs_params, **optim_input.kwargs)
    step_both(ours, theirs, ours_params, theirs_params, generator, impl, steps=7)


@pytest.mark.parametrize("error_input", error_inputs(INFO), ids=error_id)
def test_optim_db_error_input_raises_torchs_error(error_input):
    assert_raises_as_torch(error_input, fo.Muon)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_state_dict_moves_both_ways(direction, impl):
    """Two steps in one class, its state_dict into a fresh other, then both step on as one."""
    options = dict(adjust_lr_fn="match_rms_adamw", lr=0.01)
    ours_params, theirs_params, generator = twins([(17, 33), (33, 17)])
    ours = fo.Muon(ours_params, impl=impl, **options)
    theirs = torch.optim.Muon(theirs_params, **options)
    step_both(ours, theirs, ours_params, theirs_params, generator, impl, steps=2)
    ours, theirs = handed_across(direction, ours, theirs, lambda: fo.Muon(ours_params, impl=impl),
                                 lambda: torch.optim.Muon(theirs_params))
    step_both(ours, theirs, ours_params, theirs_params, generator, impl, steps=2, first=3)


def test_exported_as_the_other_classes():
    assert fo.Muon is fo.optim.Muon is Muon and "Muon" in fo.__all__
    assert "Muon" not in fo.optim.RULES  # its matrix shape is not declared in the registry yet
    theirs = inspect.signature(torch.optim.Muon).parameters
    ours = inspect.signature(Muon).parameters
    ours_only = ("impl", "state_dtype", "stochastic_rounding", "seed", "master_weight_bits")  # this project's options
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ours_only)
    assert [(n, p.default) for n, p in theirs.items()] == [(n, p.default) for n, p in ours.items() if n not in ours_only]
    assert Muon.DEFAULTS == {n: p.default for n, p in theirs.items() if n != "params"}


def test_a_vector_param_is_refused_naming_it_and_a_second_optimizer():
    matrix, bias = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match=r"param 1 of group 0.*fo\.AdamW"):
        fo.Muon([matrix, bias])


@pytest.mark.parametrize("impl", IMPLS)
def test_a_bad_group_is_refused_before_any_group_changes(impl):
    """A complex matrix in the second group: torch's RuntimeError, and the first group untouched."""
    real = torch.nn.Parameter(torch.randn(5, 3))
    complex_matrix = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))
    real.grad, complex_matrix.grad = torch.randn(5, 3), torch.randn(2, 3, dtype=torch.complex64)
    before = real.detach().clone()
    optimizer = fo.Muon([{"params": [real]}, {"params": [complex_matrix]}], impl=impl)
    with pytest.raises(RuntimeError, match="Muon does not support complex parameters"):
        optimizer.step()
    assert torch.equal(real, before) and not optimizer.state


BAD_ARGUMENTS = [(dict(ns_steps=100), "ns_steps=100"), (dict(ns_steps=2.5), "ns_steps=2.5"),
                 (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"), (dict(eps=-1.0), "eps=-1.0"),
                 (dict(impl="cuda"), "impl='cuda'"), (dict(momentum=-0.1), "momentum should be >= 0")]


@pytest.mark.parametrize("kwargs, words", BAD_ARGUMENTS, ids=[words for _, words in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_at_construction(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
        fo.Muon([torch.nn.Parameter(torch.randn(3, 4))], **kwargs)


def test_triton_impl_refuses_float64_params_before_any_change():
    param = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    param.grad = torch.randn(3, 4, dtype=torch.float64)
    before = param.detach().clone()
    optimizer = fo.Muon([param], impl="triton")
    with pytest.raises(ValueError, match="float64.*impl='reference'"):
        optimizer.step()
    assert torch.equal(param, before) and not optimizer.state
    assert fo.Muon([param]).chosen_impl([param]) == "reference"  # auto: the oracle, in float64 as torch
