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
The factored toy, "FactoredRMSprop": RMSprop whose v̂ is the factored estimate r·cᵀ/Σr of a running mean
of g² (r, c its row and column sums), through the factored shape's suite (tests/test_factored_rules.py).
The history toy, "BarzilaiBorwein": gradient descent whose step size is sᵀs/sᵀy of the last pair (lr at
first), through the history shape's suite (tests/test_history_rules.py) and its equations written out here.
"""
from typing import NamedTuple

import re

import pytest
import torch
import triton
import triton.language as tl

from fusedoptim import optim
from fusedoptim.kernels import adafactor as factored_kernels
from fusedoptim.kernels.elementwise import hyperparameter
from fusedoptim.optim.factored_rule import FactoredMath, FactoredRule
from fusedoptim.optim.history_rule import HistoryRule
from fusedoptim.optim.hyperparameters import Hyperparameter, fraction, lr, number
from fusedoptim.optim.matrix_rule import MatrixRule, matrix_row
from fusedoptim.optim.quantization import QUANTIZED_DTYPES
from fusedoptim.optim.reference import upcast
from fusedoptim.optim.reference.history import HistoryMath, history_step
from fusedoptim.optim.registry import RULES, SHAPED_RULES, Rule, State, Sum
from scripts import rule_sheet
from tests import (test_amp, test_bad_input, test_behaviour, test_compile, test_factored_rules, test_history_rules,
                   test_matrix_masters, test_matrix_rules, test_parity, test_quantized_state, test_step_plan)


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


# The factored toy. 1. Its math: the update, reading V̂_ij = R_i/mean(R)·C_j (or a vector's V); its term g²
# is Adafactor's, whose row and column sums it reuses (fusedoptim/kernels/adafactor.py).
class FactoredRMSpropHyper(NamedTuple):
    eps: float


@triton.jit
def factored_rmsprop_matrix_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    step_size, row_factor, column = scalars  # −lr, R_i / max(mean R, floor), C_j
    return param + step_size * grad / (tl.sqrt(row_factor * column) + hyper.eps), ()


@triton.jit
def factored_rmsprop_vector_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    variance = factored_kernels.lerp(states[0], grad * grad, scalars[0])  # scalars: (1 − α, −lr)
    return param + scalars[1] * grad / (tl.sqrt(variance) + hyper.eps), (variance,)


# 2. Its oracle.
FLOOR = 1e-30  # mean(R) is at least this: a zero gradient's V̂ is 0, not 0/0


def factored_rmsprop(params, grads, states, group):
    r"""RMSprop with a factored second moment: :math:`R ← αR + (1 − α)\,\mathrm{mean}_j g^2`,
    :math:`C ← αC + (1 − α)\,\mathrm{mean}_i g^2`, :math:`\hat v = R C^\top / \mathrm{mean}(R)` (= r cᵀ/Σr of
    the sums), a vector's :math:`v ← αv + (1 − α)g^2`; :math:`θ ← θ − η\, g / (\sqrt{\hat v} + ε)`."""
    for param, grad, state in zip(params, grads, states):
        state["step"] += 1
        square, weight = grad.float() ** 2, 1 - group["alpha"]
        if grad.dim() > 1:
            state["row_var"].lerp_(square.mean(-1, keepdim=True), weight)  # R ← αR + (1 − α) mean_j g²
            state["col_var"].lerp_(square.mean(-2, keepdim=True), weight)  # C ← αC + (1 − α) mean_i g²
            mean_row = state["row_var"].mean(-2, keepdim=True).clamp(min=FLOOR)
            variance = state["row_var"] @ state["col_var"] / mean_row  # v̂ = R Cᵀ / mean(R)
        else:
            variance = state["variance"].lerp_(square, weight)  # v ← αv + (1 − α)g²
        param.sub_(float(group["lr"]) * grad / (variance.sqrt() + group["eps"]))  # θ ← θ − η g/(√v̂ + ε)


# 3. Its declaration (a row of SHAPED_RULES: factored_row(FACTORED_RMSPROP)).
def checked_rmsprop(arguments):
    for name, low, high in (("lr", 0.0, float("inf")), ("alpha", 0.0, 1.0)):
        if not low <= arguments[name] < high:  # NaN fails too
            raise ValueError(f"FactoredRMSprop: {name}={arguments[name]!r} must be in [{low}, {high})")
    if not arguments["eps"] > 0:
        raise ValueError(f"FactoredRMSprop: eps={arguments['eps']!r} must be > 0")
    return dict(arguments)


FACTORED_RMSPROP = FactoredRule(
    name="FactoredRMSprop", summary="RMSprop with Adafactor's factored second moment (a toy rule of the tests)",
    doc="RMSprop, v̂ factored. lr=0.01: η. alpha=0.99: the share of v kept. eps=1e-8: added to √v̂.",
    reference=factored_rmsprop, defaults=dict(lr=1e-2, alpha=0.99, eps=1e-8), checked=checked_rmsprop,
    math=FactoredMath(row_sums=factored_kernels.square_sums, column_sums=factored_kernels.column_square_sums,
                      factored_update=factored_rmsprop_matrix_update, vector_update=factored_rmsprop_vector_update),
    hyper=lambda group, lr, floor: (FactoredRMSpropHyper(float(group["eps"])), ()),
    weight=lambda group, t: 1 - group["alpha"], floor=lambda group, params: FLOOR,
    step_size=lambda group, lr, t, numel, theta_square, update_square: -lr,
    bad_arguments=((dict(alpha=1.0), "alpha=1.0 must be in [0.0, 1.0)"), (dict(eps=0.0), "eps=0.0 must be > 0")),
)


def test_the_factored_toy_passes_the_factored_shapes_suite():
    toy = FACTORED_RMSPROP
    test_factored_rules.test_fused_steps_match_the_oracle(toy)
    test_factored_rules.test_bad_arguments_are_refused_at_construction(toy)
    test_factored_rules.test_an_int8_vector_statistic_is_coded_alike_by_both_impls(toy)
    for impl in ("triton", "reference"):
        test_factored_rules.test_a_bad_group_is_refused_before_any_group_changes(toy, impl)
        test_factored_rules.test_state_dict_resume_equals_uninterrupted_run(toy, impl)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_the_factored_toys_first_step_is_its_equations(impl):
    """From zero statistics: R = (1 − α)·(row sums of g²)/m, C = (1 − α)·(column sums)/n, so
    v̂_ij = (1 − α)·r_i c_j / Σg² with r, c the sums, and θ₁ = θ₀ − η g / (√v̂ + ε), written out."""
    generator = torch.Generator().manual_seed(5)
    theta, grad = torch.randn(4, 7, generator=generator), torch.randn(4, 7, generator=generator)
    param = torch.nn.Parameter(theta.clone())
    param.grad = grad
    FACTORED_RMSPROP.optimizer([param], lr=0.1, alpha=0.9, eps=1e-3, impl=impl).step()
    rows, columns = (grad ** 2).sum(1), (grad ** 2).sum(0)
    variance = 0.1 * rows[:, None] * columns[None, :] / (grad ** 2).sum()
    torch.testing.assert_close(param.detach(), theta - 0.1 * grad / (variance.sqrt() + 1e-3))


# The history toy. 1. Its math, over the vector operations (the oracle's flat vectors and the fused
# launches both do them): the last pair with positive curvature kept, the direction −g, the step size.
def keep_the_last_pair(vectors, history, s, y, group):
    if vectors.dot(y, s) > group["curvature"]:  # sᵀy > curvature, else the previous pair stays
        history.update(last_step=s, last_change=y)


def barzilai_borwein_step_size(vectors, g, lr, history, first):
    if history["last_step"] is None:  # no pair yet: lr
        return lr
    s, y = history["last_step"], history["last_change"]
    return float(vectors.dot(s, s) / vectors.dot(s, y))  # α = sᵀs / sᵀy


BB_MATH = HistoryMath(("last_step", "last_change"), lambda group: dict(last_step=None, last_change=None),
                      keep_the_last_pair, lambda vectors, g, history, group: vectors.scaled(g, -1),
                      barzilai_borwein_step_size)


# 2. Its oracle (fusedoptim/optim/reference/<rule>.py): the shape's step with its math, on flat vectors.
def barzilai_borwein(closure, vectors, state, group):
    r"""Barzilai & Borwein 1988: :math:`θ_{k+1} = θ_k − α_k g_k`, :math:`α_0 = \text{lr}`,
    :math:`α_k = s^Ts / s^Ty` of the last pair :math:`s = θ_k − θ_{k−1}`, :math:`y = g_k − g_{k−1}` with
    :math:`s^Ty >` curvature."""
    return history_step(closure, vectors, state, group, BB_MATH)


# 3. Its declaration (a row of SHAPED_RULES: history_row(BARZILAI_BORWEIN)).
def checked_curvature(arguments):
    if not arguments["curvature"] > 0:  # NaN fails too
        raise ValueError(f"BarzilaiBorwein: curvature={arguments['curvature']!r} must be > 0")
    return arguments


BARZILAI_BORWEIN = HistoryRule(
    name="BarzilaiBorwein", summary="Gradient descent with the Barzilai–Borwein step size (a toy rule of the tests)",
    doc="Barzilai–Borwein gradient descent. lr=0.1: the first step size. curvature=1e-10: sᵀy of a kept pair.",
    defaults=dict(lr=0.1, max_iter=1, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9, curvature=1e-10),
    checked=checked_curvature, math=BB_MATH, reference=barzilai_borwein,
    state_bytes=lambda group, shapes, dtype: 4 * 4 * sum(torch.Size(shape).numel() for shape in shapes),
    bad_arguments=((dict(curvature=0.0), "curvature=0.0 must be > 0"),),
)


def test_the_history_toy_passes_the_history_shapes_suite():
    toy = BARZILAI_BORWEIN
    test_history_rules.test_fused_steps_match_the_oracle(toy)
    for impl in ("triton", "reference"):
        test_history_rules.test_bad_input_is_refused_before_any_change(toy, impl)
        test_history_rules.test_state_dict_resume_equals_uninterrupted_run(toy, impl)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_the_history_toys_steps_are_its_equations(impl):
    """On f(θ) = ½θᵀAθ − bᵀθ, three steps of one iteration each, against the equations in fp64:
    θ₁ = θ₀ − lr·g₀, then θ_{k+1} = θ_k − (sᵀs/sᵀy)·g_k with s = θ_k − θ_{k−1}, y = g_k − g_{k−1}."""
    generator = torch.Generator().manual_seed(5)
    m = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    a, b = m @ m.T + torch.eye(4, dtype=torch.float64), torch.randn(4, generator=generator, dtype=torch.float64)
    theta = [torch.randn(4, generator=generator, dtype=torch.float64)]
    param = torch.nn.Parameter(theta[0].float())

    def closure():
        param.grad = None
        loss = 0.5 * param @ a.float() @ param - b.float() @ param
        loss.backward()
        return loss.detach()

    optimizer = BARZILAI_BORWEIN.optimizer([param], lr=0.05, impl=impl)
    for _ in range(3):
        optimizer.step(closure)
    gradient = [a @ theta[0] - b]
    theta.append(theta[0] - 0.05 * gradient[0])
    for k in (1, 2):
        gradient.append(a @ theta[k] - b)
        s, y = theta[k] - theta[k - 1], gradient[k] - gradient[k - 1]
        theta.append(theta[k] - (s @ s) / (s @ y) * gradient[k])
    torch.testing.assert_close(param.detach().double(), theta[3], rtol=1e-4, atol=1e-5)
