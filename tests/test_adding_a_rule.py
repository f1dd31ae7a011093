"""Adding a rule is three things: its math, its oracle and its declaration (README, "How to add a
rule"), whatever its shape. This test adds a toy rule of each shape that way, each with a
hyperparameter no other rule has, and runs it through the registry-driven suites without editing any
of them: parity in every dtype, bad input, GradScaler, torch.compile, the launch plan's refusals,
checkpoints; parity also with int8 and int4 states, and an int4 run resumed; and each one's row of the
rule sheet (docs/rules.md) is generated.

The element-wise toy, "Velocity": v ← friction·v + g; θ ← θ − lr·v (heavy-ball momentum, undampened).
The toy with declared sums, "ClippedTrust": a per-tensor trust ratio ‖θ‖/‖g‖ (two sums over each
tensor) and clipping by the group's gradient norm (a sum over the group), as LARS with global clipping.
The matrix toy, "FrobeniusMomentum": the momentum of each matrix divided by its Frobenius norm, through
the matrix shape's suite (tests/test_matrix_rules.py) and against its equations written out here.
"""
import re

import pytest
import torch
import triton
import triton.language as tl

from fusedoptim import optim
from fusedoptim.kernels.elementwise import hyperparameter
from fusedoptim.optim.hyperparameters import Hyperparameter, fraction, lr, number
from fusedoptim.optim.matrix_rule import MatrixRule, matrix_row
from fusedoptim.optim.quantization import QUANTIZED_DTYPES
from fusedoptim.optim.reference import upcast
from fusedoptim.optim.registry import RULES, SHAPED_RULES, Rule, State, Sum
from scripts import rule_sheet
from tests import (test_amp, test_bad_input, test_behaviour, test_compile, test_matrix_masters, test_matrix_rules,
                   test_parity, test_quantized_state, test_step_plan)


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


# The toy with declared sums. 1. Its math: the terms of its three sums, and the update that reads them.
@triton.jit
def clipped_trust_reduce(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return param * param, grad * grad, grad * grad  # Σθ², Σg² of the tensor, Σg² of the group


@triton.jit
def clipped_trust_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param_square, grad_square, group_grad_square = scalars  # no scalar states: the sums alone
    param_norm, grad_norm, group_norm = tl.sqrt(param_square), tl.sqrt(grad_square), tl.sqrt(group_grad_square)
    trust = tl.where((param_norm > 0.0) & (grad_norm > 0.0), param_norm / grad_norm, 1.0)
    clip = tl.minimum(1.0, hyper.max_norm / tl.maximum(group_norm, 1e-30))
    velocity = hyper.momentum * states[FLAGS.MOMENTUM_BUFFER_INDEX] + hyperparameter(hyper.lr) * trust * clip * grad
    return param - velocity, (velocity,)


# 2. Its oracle: the sums taken on whole tensors before any param moves.
def clipped_trust(params, grads, states, group):
    r"""LARS's trust ratio with clipping by the group's norm: :math:`r = ‖θ‖/‖g‖` (1 where a norm is 0),
    :math:`c = \min(1, \text{max\_norm}/‖G‖)`, :math:`v ← μ v + η r c g,\ θ ← θ − v`."""
    group_norm = sum(upcast(g).square().sum() for g in grads).sqrt()  # ‖G‖ over every gradient of the group
    clip = torch.clamp(group["max_norm"] / torch.clamp(group_norm, min=1e-30), max=1.0)
    for param, grad, state in zip(params, grads, states):
        theta, g = upcast(param), upcast(grad)
        param_norm, grad_norm = theta.square().sum().sqrt(), g.square().sum().sqrt()
        trust = param_norm / grad_norm if param_norm > 0 and grad_norm > 0 else 1.0
        velocity = group["momentum"] * upcast(state["momentum_buffer"]) + float(group["lr"]) * trust * clip * g
        param.copy_(theta - velocity)  # θ ← θ − v
        state["momentum_buffer"].copy_(velocity)


# 3. Its declaration: the sums, in the order the reduce returns their terms; a check of its own.
def positive_number(value, group):
    if not number(value) > 0.0:  # NaN fails too
        return "must be > 0"


CLIPPED_TRUST = Rule(
    name="ClippedTrust", summary="LARS's trust ratio with clipping by the group's gradient norm (a toy rule of the tests)",
    reference=clipped_trust, update=clipped_trust_update,
    hyperparameters=(lr(1e-2), Hyperparameter("momentum", 0.9, fraction, "μ of the velocity", bad=((1.5, "[0, 1)"),)),
                     Hyperparameter("max_norm", 0.5, positive_number, "the group's gradient norm is clipped to it",
                                    bad=((0.0, "must be > 0"),))),
    states=(State("momentum_buffer"),),
    sums=(Sum("param_square", "θ²", reads=("param",)), Sum("grad_square", "g²", reads=("grad",)),
          Sum("group_grad_square", "g²", reads=("grad",), over="group")),
    reduce=clipped_trust_reduce,
)


# The matrix toy. 1. Its math: the transform of a stack of same-shape matrices, in place (torch ops here;
# Muon's is Triton: fusedoptim/kernels/newton_schulz.py).
def frobenius_transform(stack, group):
    norms = torch.linalg.vector_norm(stack.float(), dim=(1, 2), keepdim=True)  # ‖U‖_F of each matrix
    stack.copy_(stack.float() / norms.clamp(min=group["floor"]))


# 2. Its oracle (fusedoptim/optim/reference/<rule>.py): the transform of one matrix, and the whole step.
def frobenius_normalized(matrix, group):
    return matrix.float() / matrix.float().norm().clamp(min=group["floor"])  # O = U / max(‖U‖_F, floor)


def frobenius_momentum(params, grads, states, group):
    r"""Momentum normalized per matrix: :math:`B ← μB + (1 − μ)g`, :math:`U = (1 − μ)g + μB` with Nesterov
    else :math:`B`, :math:`O = U / \max(‖U‖_F, \text{floor})`, :math:`θ ← (1 − γλ)θ − γO`."""
    lr = float(group["lr"])
    for param, grad, state in zip(params, grads, states):
        buffer = state["momentum_buffer"]
        buffer.lerp_(grad, 1 - group["momentum"])  # B ← μB + (1 − μ)g
        update = grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer  # U
        param.mul_(1 - lr * group["weight_decay"])  # θ ← (1 − γλ)θ
        param.add_(frobenius_normalized(update, group).to(param.dtype), alpha=-lr)  # θ ← θ − γO


# 3. Its declaration (a row of SHAPED_RULES: matrix_row(FROBENIUS_MOMENTUM)).
def checked_floor(arguments):
    if not arguments["floor"] > 0:  # NaN fails too
        raise ValueError(f"FrobeniusMomentum: floor={arguments['floor']!r} must be > 0")
    return arguments


FROBENIUS_MOMENTUM = MatrixRule(
    name="FrobeniusMomentum", summary="Momentum divided by its Frobenius norm per matrix (a toy rule of the tests)",
    doc="Momentum divided by its Frobenius norm. lr=0.02: γ. floor=1e-8: the norm is at least floor.",
    reference=frobenius_momentum, transform=frobenius_transform, transform_reference=frobenius_normalized,
    adjusted_lr=lambda lr, group, shape: lr,
    defaults=dict(lr=0.02, weight_decay=0.0, momentum=0.9, nesterov=False, floor=1e-8), checked=checked_floor,
    bad_arguments=((dict(floor=0.0), "floor=0.0 must be > 0"),),
)


def register(monkeypatch, rule):
    """The row in the registry and its class exported, as fusedoptim/optim/__init__.py does for every row."""
    monkeypatch.setitem(RULES, rule.name, rule)
    monkeypatch.setattr(optim, rule.name, optim.optimizer_class(rule), raising=False)
    return rule


@pytest.fixture
def registered(monkeypatch):
    return register(monkeypatch, VELOCITY)


@pytest.mark.parametrize("toy", [VELOCITY, CLIPPED_TRUST], ids=lambda toy: toy.name)
def test_the_toy_rule_passes_the_registry_driven_suites(toy, monkeypatch):
    rule = register(monkeypatch, toy)
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
    if rule.sums:
        test_step_plan.test_a_rule_with_a_reduction_takes_one_reduce_launch_and_no_torch_op_per_tensor(
            rule.name, monkeypatch)


def test_the_matrix_toy_passes_the_matrix_shapes_suite():
    toy = FROBENIUS_MOMENTUM
    test_matrix_rules.test_fused_steps_match_the_oracle(toy)
    test_matrix_rules.test_the_transform_kernel_matches_its_oracle(toy)
    test_matrix_rules.test_bad_arguments_are_refused_at_construction(toy)
    test_matrix_rules.test_an_int8_momentum_is_coded_alike_by_both_impls(toy)
    test_matrix_masters.test_fused_masters_match_the_oracle(toy, 24)
    test_matrix_masters.test_bad_masters_are_refused_before_any_change(toy)
    for impl in ("triton", "reference"):
        test_matrix_rules.test_a_bad_group_is_refused_before_any_group_changes(toy, impl)
        test_matrix_rules.test_state_dict_resume_equals_uninterrupted_run(toy, impl)
        test_matrix_masters.test_a_checkpoint_resumes_bit_for_bit_and_loads_by_width(toy, impl)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_the_matrix_toys_first_step_is_its_equations(impl):
    """From a zero momentum, no Nesterov, no decay: B = (1 − μ)g, so θ₁ = θ₀ − γ·g/‖g‖_F, written out."""
    theta = torch.randn(6, 10, generator=torch.Generator().manual_seed(3))
    param = torch.nn.Parameter(theta.clone())
    param.grad = torch.randn(6, 10, generator=torch.Generator().manual_seed(4))
    optimizer = FROBENIUS_MOMENTUM.optimizer([param], lr=0.1, impl=impl)
    optimizer.step()
    torch.testing.assert_close(param.detach(), theta - 0.1 * param.grad / param.grad.square().sum().sqrt())


def test_the_sums_are_read_once_each_in_the_byte_model():
    """θ and g read by the reduce for three sums (g for two of them, counted once): 2 reads of 4 bytes
    beyond the element-wise step's θ, g, θ written and the velocity read and written."""
    group = dict(CLIPPED_TRUST.defaults)
    assert CLIPPED_TRUST.bytes_per_param(group) == 4 * 3 + 2 * 4 + 2 * 4


def test_its_hyperparameter_is_checked_from_its_declaration_alone(registered):
    """No shared table knows "friction": the signature, the check and the message come from the row."""
    with pytest.raises(ValueError, match=r"Velocity: invalid friction=1.5 in the optimizer's arguments: friction "
                                         r"must be in \[0, 1\)"):
        optim.Velocity([torch.zeros(3)], friction=1.5)
    assert "friction=0.5" in optim.Velocity.__doc__


def test_their_rows_of_the_rule_sheet_are_generated_from_their_declarations():
    """The rule sheet of the registry with the toy rows has each toy's row, its arguments, states and
    sums as declared; docs/rules.md itself is not written (python -m scripts.rule_sheet would write it)."""
    sheet = rule_sheet.table({**RULES, VELOCITY.name: VELOCITY, CLIPPED_TRUST.name: CLIPPED_TRUST},
                             {**SHAPED_RULES, FROBENIUS_MOMENTUM.name: matrix_row(FROBENIUS_MOMENTUM)})
    headers = [header for header, _ in rule_sheet.COLUMNS]

    def cells(name):
        rows = [line for line in sheet.splitlines() if line.startswith(f"| `fo.{name}` |")]
        assert len(rows) == 1, sheet
        return dict(zip(headers, (cell.strip() for cell in rows[0][1:-1].split("|"))))

    velocity = cells("Velocity")
    assert velocity["arguments (defaults)"] == "`lr=0.01, friction=0.5`", velocity
    assert velocity["element-wise states"] == "`velocity`" and velocity["scalar states"] == "none", velocity
    assert velocity["declared sums"] == "none", velocity
    assert velocity["bytes/param"] == "20", "θ, g and the velocity: 4 bytes × (3 + 2 × 1)"
    clipped = cells("ClippedTrust")
    assert clipped["arguments (defaults)"] == "`lr=0.01, momentum=0.9, max_norm=0.5`", clipped
    assert clipped["declared sums"] == ("`param_square`: Σ θ² per tensor; `grad_square`: Σ g² per tensor; "
                                        "`group_grad_square`: Σ g² per group"), clipped
    assert clipped["bytes/param"] == "28", "the element-wise 20, and the reduce's reads of θ and g"
    frobenius = [line for line in sheet.splitlines() if line.startswith("| `fo.FrobeniusMomentum` |")]
    assert len(frobenius) == 1 and "matrix:" in frobenius[0], sheet
    assert ("`lr=0.02, weight_decay=0.0, momentum=0.9, nesterov=False, floor=1e-08, *, impl='auto', state_dtype=None, "
            "stochastic_rounding=False, seed=0, master_weight_bits=None`") in frobenius[0], frobenius
