"""The declaration of a rule of the matrix shape (``optim.rule.SHAPES``): a momentum, a transform of each
whole matrix, an apply. Its class is made from it (``optim.matrix.matrix_optimizer``) and its registry row
too (``matrix_row``): a matrix rule is its transform (kernel), its oracle and this declaration.

The shape's step, for each 2-D param θ with gradient g (μ momentum, γ lr, λ weight decay):

    B ← μ·B + (1 − μ)·g;  U = (1 − μ)·g + μ·B if nesterov, else B     (the momentum, element-wise)
    O = T(U)                                                          (the rule's transform, per matrix)
    θ ← (1 − γλ)·θ − γ'·O,  γ' = adjusted_lr(γ, group, θ's shape)     (the apply, element-wise)
"""
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fusedoptim.optim.matrix import MOMENTUM, matrix_optimizer
from fusedoptim.optim.quantization import FORMATS, is_quantized
from fusedoptim.optim.rule import ShapedRule

# The arguments the engine reads, first in every matrix rule's signature, as torch.optim.Muon orders them.
SHAPE_ARGUMENTS = ("lr", "weight_decay", "momentum", "nesterov")
SCALE_BYTES = 4  # a quantized momentum's scales are fp32


@dataclass(frozen=True, eq=False)
class MatrixRule:
    name: str  # the class's name
    summary: str  # one line: what the rule does, and its paper
    doc: str  # the class's docstring, help(fo.<name>): each argument, its default and meaning
    reference: Callable  # the oracle of the whole step, rule(params, grads, states, group), per tensor
    # The arguments in signature order, with their defaults: SHAPE_ARGUMENTS first, then the rule's own.
    defaults: dict
    # The rule's own checks, arguments -> the group's values (ValueError naming the argument, at construction).
    checked: Callable
    # The matrix transform, transform(stack, group): O = T(U) for a stack of same-shape matrices, in place
    # (the kernel: Triton launches or torch ops on the stack); and its oracle, (matrix, group) -> O.
    transform: Callable
    transform_reference: Callable
    adjusted_lr: Callable  # γ' = adjusted_lr(lr, group, shape): the lr scaled for the matrix's shape
    torch_twin: Optional[type] = None
    # For the tests of the shape (tests/test_matrix_rules.py): bad arguments, each (kwargs, words of the
    # error); and how far one step's fused O may be from the oracle's, element by element (Muon's bf16
    # Newton–Schulz sums in another order: a few bf16 steps).
    bad_arguments: tuple = ()
    transform_atol: float = 1e-6

    def __post_init__(self):
        if tuple(self.defaults)[:len(SHAPE_ARGUMENTS)] != SHAPE_ARGUMENTS:
            raise ValueError(f"{self.name}: a matrix rule's arguments start with {SHAPE_ARGUMENTS}, the engine's; "
                             f"got {tuple(self.defaults)}")

    @functools.cached_property
    def optimizer(self) -> type:
        """The class, made once (``fo.<name>`` is this one)."""
        return matrix_optimizer(self)

    def state_bytes(self, group, shapes, param_dtype, state_dtype=None, master_weight_bits=None) -> int:
        """Bytes of state kept for matrices of these shapes: a momentum buffer each, in the param's dtype, or
        with ``state_dtype`` "int8"/"int4" its codes (a byte each, int4 a byte per started pair) and one fp32
        scale per started quantization block, as ``optim.rule.Rule.state_bytes`` counts them; with
        ``master_weight_bits`` θ's residual too (int16 for 32 bits, int8 for 24)."""
        numels = [torch.Size(shape).numel() for shape in shapes]
        residuals = 0 if master_weight_bits is None else (master_weight_bits // 8 - 2) * sum(numels)
        if not is_quantized(state_dtype):
            return residuals + sum(numels) * torch.empty((), dtype=param_dtype).element_size()
        fmt = FORMATS[state_dtype]
        return residuals + sum(fmt.codes_numel(n) + SCALE_BYTES * fmt.scale_numel(n) for n in numels)


def is_matrix(param) -> bool:
    return param.dim() == 2


def matrix_row(rule: MatrixRule) -> ShapedRule:
    """The registry's row of a matrix rule (``optim.registry.SHAPED_RULES``), its class made from it."""
    return ShapedRule(name=rule.name, shape="matrix", summary=rule.summary, optimizer=rule.optimizer,
                      reference=rule.reference, torch_twin=rule.torch_twin, state_bytes=rule.state_bytes,
                      takes=is_matrix)


__all__ = ["MOMENTUM", "MatrixRule", "SHAPE_ARGUMENTS", "is_matrix", "matrix_row"]
