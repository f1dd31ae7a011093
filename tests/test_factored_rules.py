"""Every rule of the factored shape (``SHAPED_RULES`` rows with shape "factored", declared as
``optim.factored_rule.FactoredRule``) through the shape's engine: the fused step against the rule's oracle
over several steps (params and every statistic), its bad arguments and a bad group refused before anything
changes, a state_dict resumed as the uninterrupted run, an int8 vector statistic coded alike by both impls.
tests/test_adding_a_rule.py runs a toy factored rule through these unchanged; each rule's own tests
(test_adafactor*.py) add its third party (torch.optim.Adafactor).

Tolerances: torch's fp32 defaults (the fused statistics are fp32 sums in another order than the oracle's).
"""
import copy
import re

import pytest
import torch

from fusedoptim.optim.quantization import code_values
from fusedoptim.optim.registry import SHAPED_RULES
from tests.conftest import by_rule_name, seeded_steps
from tests import test_matrix_rules

FACTORED_RULES = [row.optimizer.rule for row in SHAPED_RULES.values() if row.shape == "factored"]
SHAPES = [(6, 9), (2, 5, 3), (7,)]  # a matrix, a stack of matrices (statistics per matrix), a vector
# The first step starts the statistics from zero, the next ones lerp them: three show the running means.
STEPS = 3


def run(rule, impl, steps=STEPS, state_dtype=None):
    return seeded_steps(rule, impl, SHAPES, steps, state_dtype=state_dtype)


by_name = by_rule_name


@by_name(FACTORED_RULES)
def test_fused_steps_match_the_oracle(rule):
    fused_params, fused = run(rule, "triton")
    params, reference = run(rule, "reference")
    assert fused.chosen_impl() == "triton" and reference.chosen_impl() == "reference"
    for i, (p, q) in enumerate(zip(fused_params, params)):
        torch.testing.assert_close(p.detach(), q.detach(), **rule.tolerances, msg=lambda m: f"{rule.name}: param {i}: {m}")
        assert set(fused.state[p]) == set(reference.state[q]), i
        expected = {rule.row_state, rule.column_state} if p.dim() > 1 else {rule.vector_state}
        assert set(fused.state[p]) == {"step"} | expected, (i, set(fused.state[p]))
        for name in fused.state[p]:
            torch.testing.assert_close(fused.state[p][name], reference.state[q][name], **rule.tolerances,
                                       msg=lambda m: f"{rule.name}: param {i}, {name}: {m}")
    assert rule.state_bytes({}, [(6, 9)], torch.float32) == 4 + (6 + 9) * 4, "O(n + m): R, C and the step"


@by_name(FACTORED_RULES)
def test_bad_arguments_are_refused_at_construction(rule):
    assert rule.bad_arguments, f"{rule.name} declares no bad arguments to check"
    for kwargs, words in rule.bad_arguments:
        with pytest.raises(ValueError, match=re.escape(words)):
            rule.optimizer([torch.nn.Parameter(torch.randn(3, 4))], **kwargs)
    with pytest.raises(ValueError, match=f"{rule.name}: state_dtype='int2' is not supported"):
        rule.optimizer([torch.nn.Parameter(torch.randn(3, 4))], state_dtype="int2")


@by_name(FACTORED_RULES)
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_a_bad_group_is_refused_before_any_group_changes(rule, impl):
    test_matrix_rules.test_a_bad_group_is_refused_before_any_group_changes(rule, impl)  # the same refusal, a 2-D param


@by_name(FACTORED_RULES)
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
        assert torch.equal(p, q)
        assert all(torch.equal(optimizer.state[p][name], resumed.state[q][name]) for name in optimizer.state[p])


@by_name(FACTORED_RULES)
def test_an_int8_vector_statistic_is_coded_alike_by_both_impls(rule):
    """Both impls quantize the same fp32 statistic with the same scheme, rounding to nearest: the same codes."""
    fused_params, fused = run(rule, "triton", steps=2, state_dtype="int8")
    params, reference = run(rule, "reference", steps=2, state_dtype="int8")
    vector, scale = rule.vector_state, f"{rule.vector_state}_scale"
    for p, q in zip(fused_params, params):
        if p.dim() > 1:
            continue
        assert fused.state[p][vector].dtype == torch.int8
        codes = code_values(fused.state[p][vector], rule.vector_kind, p.numel())
        expected = code_values(reference.state[q][vector], rule.vector_kind, q.numel())
        assert torch.equal(codes, expected), (codes, expected)
        torch.testing.assert_close(fused.state[p][scale], reference.state[q][scale], rtol=1.3e-6, atol=0)
        torch.testing.assert_close(p.detach(), q.detach(), **rule.tolerances)
