"""Adding a rule is three things: its math, its oracle and its declaration (README, "How to add a
rule"). This test adds a toy rule that way, with a hyperparameter no other rule has, and runs it
through the registry-driven suites without editing any of them: parity in every dtype, bad input,
GradScaler, torch.compile, the launch plan's refusals, checkpoints; parity and GradScaler also with int8
and int4 states, and an int4 run resumed; and its row of the rule sheet (docs/rules.md) is generated.

The toy, "Velocity": v ← friction·v + g; θ ← θ − lr·v (heavy-ball momentum, undampened).
"""
import re

import pytest
import torch
import triton
import triton.language as tl

from fusedoptim import optim
from fusedoptim.kernels.elementwise import hyperparameter
from fusedoptim.optim.hyperparameters import Hyperparameter, fraction, lr
from fusedoptim.optim.quantization import QUANTIZED_DTYPES
from fusedoptim.optim.reference import upcast
from fusedoptim.optim.registry import RULES, Rule, State
from scripts import rule_sheet
from tests import test_amp, test_bad_input, test_behaviour, test_compile, test_parity, test_quantized_state, test_step_plan


# 1. The math (fusedoptim/kernels/<rule>.py).
@triton.jit
def velocity_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    # hyper and FLAGS come from the declaration: hyperparameters and where each state is, by name
    velocity = hyper.friction * states[FLAGS.VELOCITY_INDEX] + grad
    return param - hyperparameter(hyper.lr) * velocity, (velocity,)


# 2. The oracle (fusedoptim/optim/reference/<rule>.py).
def velocity(params, grads, states, group):
    r"""Heavy-ball momentum: :math:`v ← μ v + g,\ θ ← θ − η v` (Polyak 1964), μ = friction."""
    for param, grad, state in zip(params, grads, states):
        v = group["friction"] * upcast(state["velocity"]) + upcast(grad)  # v ← μ·v + g
        param.copy_(upcast(param) - float(group["lr"]) * v)  # θ ← θ − η·v
        state["velocity"].copy_(v)


# 3. The declaration (a row of fusedoptim/optim/registry.py).
VELOCITY = Rule(
    name="Velocity", summary="Heavy-ball momentum, undampened (a toy rule of the tests)",
    reference=velocity, update=velocity_update,
    hyperparameters=(lr(1e-2), Hyperparameter("friction", 0.5, fraction, "μ: the share of the velocity kept per step", bad=((1.5, "must be in [0, 1)"),))),
    states=(State("velocity"),),
)


@pytest.fixture
def registered(monkeypatch):
    """The row in the registry and its class exported, as fusedoptim/optim/__init__.py does for every row."""
    monkeypatch.setitem(RULES, VELOCITY.name, VELOCITY)
    monkeypatch.setattr(optim, VELOCITY.name, optim.optimizer_class(VELOCITY), raising=False)
    return VELOCITY


def test_the_toy_rule_passes_the_registry_driven_suites(registered):
    rule = registered
    for dtype in rule.dtypes:
        test_parity.test_triton_matches_reference(rule, dtype, dict(test_parity.variants(rule))["defaults"],
                                                  test_parity.SHAPES["mixed"])
    test_parity.test_update_moves_params(rule)
    for state_dtype in QUANTIZED_DTYPES:
        test_parity.test_quantized_states_match_the_reference_to_the_code(
            rule, torch.float32, dict(test_parity.variants(rule))["defaults"], state_dtype)
    test_quantized_state.test_a_resumed_quantized_run_equals_the_uninterrupted_one_bit_for_bit(rule, "int4")
    for spec in rule.arguments:
        for value, text in spec.bad:
            text = re.escape(text)  # as the bad-input suite matches it
            test_bad_input.test_bad_hyperparameter_at_construction(rule.name, spec.name, value, text)
            for impl in ("triton", "reference", "auto"):
                test_bad_input.test_bad_hyperparameter_set_later_fails_the_step_before_any_update(
                    rule.name, spec.name, value, text, impl)
    for impl in ("triton", "reference"):
        test_behaviour.test_state_dict_resume_equals_uninterrupted_run(rule, impl)
        test_behaviour.test_lr_as_tensor_changed_in_place(rule, impl)
        for precision in test_amp.PRECISIONS:
            test_amp.test_grad_scaler_unscales_exactly_and_skips_an_overflow_step_whole(rule, impl, precision)
        test_step_plan.test_a_state_of_another_size_is_refused_before_any_change(rule, "smaller", impl)
    test_compile.test_compiled_step_is_one_graph_and_never_recompiles_as_the_lr_changes(rule)


def test_its_hyperparameter_is_checked_from_its_declaration_alone(registered):
    """No shared table knows "friction": the signature, the check and the message come from the row."""
    with pytest.raises(ValueError, match=r"Velocity: invalid friction=1.5 in the optimizer's arguments: friction "
                                         r"must be in \[0, 1\)"):
        optim.Velocity([torch.zeros(3)], friction=1.5)
    assert "friction=0.5" in optim.Velocity.__doc__


def test_its_row_of_the_rule_sheet_is_generated_from_its_declaration():
    """The rule sheet of the registry with the toy row has the toy's row, its arguments and states as
    declared; docs/rules.md itself is not written (python -m scripts.rule_sheet would write it)."""
    sheet = rule_sheet.table({**RULES, VELOCITY.name: VELOCITY})
    rows = [line for line in sheet.splitlines() if line.startswith("| `fo.Velocity` |")]
    assert len(rows) == 1, sheet
    headers = [header for header, _ in rule_sheet.COLUMNS]
    cells = dict(zip(headers, (cell.strip() for cell in rows[0][1:-1].split("|"))))
    assert cells["arguments (defaults)"] == "`lr=0.01, friction=0.5`", cells
    assert cells["element-wise states"] == "`velocity`" and cells["scalar states"] == "none", cells
    assert cells["bytes/param"] == "20", "θ, g and the velocity: 4 bytes × (3 + 2 × 1)"
