"""The rules of other shapes (``fusedoptim.optim.registry.SHAPED_RULES``: Muon's matrices, Adafactor's
factored state, L-BFGS's history) as the registry declares them: each row's class is the one exported,
its defaults its signature's, and its declared state bytes (the memory model, the rule sheet's column)
are exactly what its optimizer keeps after a step."""
import inspect

import pytest
import torch

import fusedoptim as fo
from fusedoptim.optim.registry import RULES, SHAPED_RULES
from fusedoptim.optim.rule import SHAPES
from scripts import rule_sheet

SHAPES_OF_PARAMS = [(17, 33), (3, 7, 5), (33,), ()]  # a matrix, a stack of matrices, a vector, a scalar


def kept_bytes(optimizer) -> int:
    """The bytes of every state tensor, those in lists too (L-BFGS's history)."""
    tensors = []
    for state in optimizer.state.values():
        for value in state.values():
            values = value if isinstance(value, list) else [value]
            tensors += [v for v in values if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("name", list(SHAPED_RULES))
def test_each_row_is_its_exported_class_with_its_signature(name):
    rule = SHAPED_RULES[name]
    assert getattr(fo, name) is rule.optimizer and rule.shape in SHAPES and name not in RULES
    parameters = inspect.signature(rule.optimizer).parameters
    assert {name: parameters[name].default for name in rule.defaults} == rule.defaults, parameters
    assert rule_sheet.signature_arguments(rule.optimizer).startswith("lr="), "the sheet's arguments, params left out"


@pytest.mark.parametrize("name", [name for name, rule in SHAPED_RULES.items() if not rule.optimizer.NEEDS_CLOSURE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_declared_state_bytes_are_what_one_step_keeps(name, dtype):
    rule = SHAPED_RULES[name]
    torch.manual_seed(0)
    params = [p for p in (torch.randn(shape, dtype=dtype) for shape in SHAPES_OF_PARAMS) if rule.takes(p)]
    optimizer = rule.optimizer(params, impl="reference")
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    declared = rule.state_bytes(optimizer.param_groups[0], [p.shape for p in params], dtype)
    assert declared == kept_bytes(optimizer), (declared, kept_bytes(optimizer))


def test_lbfgs_declared_state_bytes_are_what_a_full_history_keeps():
    """Rosenbrock's valley takes more iterations than a history of 3 holds: the history fills."""
    rule = SHAPED_RULES["LBFGS"]
    xy = torch.tensor([-1.5, 2.0], requires_grad=True)
    other = torch.zeros(5, requires_grad=True)  # a second param: the flat vectors span both
    optimizer = rule.optimizer([xy, other], history_size=3, impl="reference")

    def closure():
        optimizer.zero_grad()
        loss = (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2 + (other - 1).square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert len(optimizer.state[xy]["old_dirs"]) == 3, "the history is not full: a longer problem is needed"
    declared = rule.state_bytes(optimizer.param_groups[0], [xy.shape, other.shape], torch.float32)
    assert declared == kept_bytes(optimizer), (declared, kept_bytes(optimizer))


@pytest.mark.parametrize("name", [name for name, rule in SHAPED_RULES.items() if rule.shape == "matrix"])
@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_declared_state_bytes_of_a_quantized_momentum_are_what_one_step_keeps(name, state_dtype):
    """Codes and fp32 scales: (17, 33) has 561 elements, so a partial block (int8: 3 of 256, int4: 5 of 128)
    and, for int4, an odd count of codes (281 bytes)."""
    rule = SHAPED_RULES[name]
    params = [torch.randn(17, 33, generator=torch.Generator().manual_seed(0)), torch.randn(4, 4)]
    optimizer = rule.optimizer(params, impl="reference", state_dtype=state_dtype)
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    declared = rule.state_bytes(optimizer.param_groups[0], [p.shape for p in params], torch.float32, state_dtype)
    assert declared == kept_bytes(optimizer), (declared, kept_bytes(optimizer))
