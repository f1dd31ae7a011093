"""Every rule of the history shape (``SHAPED_RULES`` rows with shape "history", declared as
``optim.history_rule.HistoryRule``) through the shape's engine: the fused step (its vector operations as
multi-tensor launches) against the rule's oracle over several closure steps, its bad arguments and a bad
step refused before anything changes, a state_dict resumed as the uninterrupted run.
tests/test_adding_a_rule.py runs a toy history rule through these unchanged; each rule's own tests
(test_lbfgs.py) add its third party (torch.optim.LBFGS).

Tolerances: the fused dot products sum in another order than torch's (fp32 tolerance per step).
"""
import copy

import pytest
import torch

from fusedoptim.optim.registry import SHAPED_RULES
from tests.conftest import by_rule_name

HISTORY_RULES = [row.optimizer.rule for row in SHAPED_RULES.values() if row.shape == "history"]
SHAPES = [(3, 4), (5,)]
STEPS = 3  # the first iteration ever, then iterations on a history
SHORT = dict(max_iter=2, max_eval=4)  # two iterations a step: few launches under the Triton interpreter
FP32 = dict(rtol=1e-5, atol=1e-6)


def problem(seed=0):
    """Params, and a convex quadratic f(θ) = Σ ½·a·θ² − b·θ's closure over them."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]
    return params, quadratic(params)


def quadratic(params):
    generator = torch.Generator().manual_seed(1)
    curvatures = [torch.rand(shape, generator=generator) + 0.5 for shape in SHAPES]
    targets = [torch.randn(shape, generator=generator) for shape in SHAPES]

    def closure():
        for p in params:
            p.grad = None
        loss = sum((0.5 * a * p * p - b * p).sum() for p, a, b in zip(params, curvatures, targets))
        loss.backward()
        return loss.detach()

    return closure


def run(rule, impl, steps=STEPS):
    params, closure = problem()
    optimizer = rule.optimizer(params, impl=impl, **SHORT)
    for _ in range(steps):
        optimizer.step(closure)
    return params, optimizer


by_name = by_rule_name


@by_name(HISTORY_RULES)
def test_fused_steps_match_the_oracle(rule):
    fused_params, fused = run(rule, "triton")
    params, reference = run(rule, "reference")
    assert fused.chosen_impl() == "triton" and reference.chosen_impl() == "reference"
    for i, (p, q) in enumerate(zip(fused_params, params)):
        torch.testing.assert_close(p.detach(), q.detach(), **FP32, msg=lambda m: f"{rule.name}: param {i}: {m}")
    state, expected = fused.state[fused_params[0]], reference.state[params[0]]
    assert set(state) == set(expected) and set(state) <= set(rule.optimizer.STATE), (set(state), set(expected))
    assert state["func_evals"] == expected["func_evals"] and state["n_iter"] == expected["n_iter"] == STEPS * 2
    torch.testing.assert_close(state["d"], expected["d"], **FP32)


@by_name(HISTORY_RULES)
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_bad_input_is_refused_before_any_change(rule, impl):
    assert rule.bad_arguments, f"{rule.name} declares no bad arguments to check"
    for kwargs, words in rule.bad_arguments:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
            rule.optimizer([torch.nn.Parameter(torch.randn(3))], impl=impl, **kwargs)
    with pytest.raises(ValueError, match=f"{rule.name}: max_iter=0 must be an integer"):
        rule.optimizer([torch.nn.Parameter(torch.randn(3))], max_iter=0)
    params, closure = problem()
    optimizer = rule.optimizer(params, impl=impl)
    with pytest.raises(TypeError, match=f"{rule.name}.step needs a closure"):
        optimizer.step(None)
    optimizer.param_groups[0]["params"].append(torch.nn.Parameter(torch.randn(2, dtype=torch.float64)))
    if impl == "triton":  # the kernels take fp32: refused before the closure runs
        with pytest.raises(ValueError, match="param 2 has dtype torch.float64"):
            optimizer.step(closure)
    assert not optimizer.state and all(p.grad is None for p in params)


@by_name(HISTORY_RULES)
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_state_dict_resume_equals_uninterrupted_run(rule, impl):
    """Two steps, the state_dict into a fresh optimizer on copies of the params, then a step of both:
    the same bits."""
    params, optimizer = run(rule, impl, steps=2)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = rule.optimizer(copies, impl=impl, **SHORT)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file
    optimizer.step(quadratic(params))
    resumed.step(quadratic(copies))
    for p, q in zip(params, copies):
        assert torch.equal(p, q), rule.name
    assert torch.equal(optimizer.state[params[0]]["d"], resumed.state[copies[0]]["d"])
