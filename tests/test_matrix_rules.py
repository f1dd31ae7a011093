"""Every rule of the matrix shape (``SHAPED_RULES`` rows with shape "matrix", declared as
``optim.matrix_rule.MatrixRule``) through the shape's engine: the fused step against the rule's oracle
over several steps, its transform kernel against the transform's oracle, its bad arguments and a bad
group refused before anything changes, a state_dict resumed as the uninterrupted run, an int8 momentum
coded alike by both impls. tests/test_adding_a_rule.py runs a toy matrix rule through these unchanged;
each rule's own tests (test_muon*.py) add its third party (torch.optim.Muon).

Tolerances: the fused momentum and apply are fp32 element-wise arithmetic in torch's lerp formula
(torch's fp32 tolerance); the transform may differ from its oracle by the row's ``transform_atol`` per
element of O, so θ by γ'·transform_atol per step.
"""
import copy

import pytest
import torch

from fusedoptim.optim.quantization import code_values
from fusedoptim.optim.registry import SHAPED_RULES
from tests.conftest import by_rule_name, seeded_steps

MATRIX_RULES = [row.optimizer.rule for row in SHAPED_RULES.values() if row.shape == "matrix"]
SHAPES = [(9, 20), (20, 9)]  # wide and tall (a transform may iterate on the transpose)
# The first step starts the momentum from zero, the second carries it. Few: a Muon step under the Triton
# interpreter takes seconds, and test_muon*.py step Muon further.
STEPS = 2
FP32 = dict(rtol=1.3e-6, atol=1e-5)


def run(rule, impl, steps=STEPS, state_dtype=None, **options):
    return seeded_steps(rule, impl, SHAPES, steps, state_dtype=state_dtype, **options)


by_name = by_rule_name


@by_name(MATRIX_RULES)
def test_fused_steps_match_the_oracle(rule):
    fused_params, fused = run(rule, "triton")
    params, reference = run(rule, "reference")
    assert fused.chosen_impl() == "triton" and reference.chosen_impl() == "reference"
    group = reference.param_groups[0]
    for i, (p, q) in enumerate(zip(fused_params, params)):
        atol = FP32["atol"] + STEPS * rule.transform_atol * rule.adjusted_lr(group["lr"], group, p.shape)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=FP32["rtol"], atol=atol,
                                   msg=lambda m: f"{rule.name}: param {i}: {m}")
        assert set(fused.state[p]) == set(reference.state[q]) == set(rule.optimizer.STATE)
        torch.testing.assert_close(fused.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"], **FP32)


@by_name(MATRIX_RULES)
def test_the_transform_kernel_matches_its_oracle(rule):
    stack = torch.randn(2, *SHAPES[1], generator=torch.Generator().manual_seed(1))
    expected = torch.stack([rule.transform_reference(matrix, rule.defaults).float() for matrix in stack])
    rule.transform(stack, rule.defaults)
    torch.testing.assert_close(stack, expected, rtol=0, atol=rule.transform_atol)


@by_name(MATRIX_RULES)
def test_bad_arguments_are_refused_at_construction(rule):
    assert rule.bad_arguments, f"{rule.name} declares no bad arguments to check"
    for kwargs, words in rule.bad_arguments:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
            rule.optimizer([torch.nn.Parameter(torch.randn(3, 4))], **kwargs)
    with pytest.raises(ValueError, match=rf"{rule.name} only supports 2D.*param 1 of group 0"):
        rule.optimizer([torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))])


@by_name(MATRIX_RULES)
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_a_bad_group_is_refused_before_any_group_changes(rule, impl):
    real = torch.nn.Parameter(torch.randn(5, 3))
    complex_matrix = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))
    real.grad, complex_matrix.grad = torch.randn(5, 3), torch.randn(2, 3, dtype=torch.complex64)
    before = real.detach().clone()
    optimizer = rule.optimizer([{"params": [real]}, {"params": [complex_matrix]}], impl=impl)
    with pytest.raises(RuntimeError, match=f"{rule.name} does not support complex parameters"):
        optimizer.step()
    assert torch.equal(real, before) and not optimizer.state


@by_name(MATRIX_RULES)
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_state_dict_resume_equals_uninterrupted_run(rule, impl):
    """A step, the state_dict into a fresh optimizer on copies of the params, then a step of both from the
    same gradients: the same bits."""
    params, optimizer = run(rule, impl, steps=1)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = rule.optimizer(copies, impl=impl)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file: torch's load keeps the tensors
    generator = torch.Generator().manual_seed(2)
    for p, q in zip(params, copies):
        p.grad = torch.randn(p.shape, generator=generator)
        q.grad = p.grad.clone()
    optimizer.step()
    resumed.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q) and torch.equal(optimizer.state[p]["momentum_buffer"], resumed.state[q]["momentum_buffer"])


@by_name(MATRIX_RULES)
def test_an_int8_momentum_is_coded_alike_by_both_impls(rule):
    """Both impls quantize the same fp32 momentum with the same scheme, rounding to nearest: the same codes."""
    fused_params, fused = run(rule, "triton", steps=2, state_dtype="int8")
    params, reference = run(rule, "reference", steps=2, state_dtype="int8")
    for i, (p, q) in enumerate(zip(fused_params, params)):
        codes = code_values(fused.state[p]["momentum_buffer"], "signed", p.numel())
        assert fused.state[p]["momentum_buffer"].dtype == torch.int8
        assert torch.equal(codes, code_values(reference.state[q]["momentum_buffer"], "signed", q.numel())), i
        torch.testing.assert_close(fused.state[p]["momentum_buffer_scale"], reference.state[q]["momentum_buffer_scale"],
                                   rtol=1.3e-6, atol=0)
