"""``Muon``: torch.optim.Muon's twin, with its arguments, defaults and state (a state_dict loads both
ways). Its equations are the oracle's (``optim.reference.muon``).

Muon is a rule of the matrix shape: this module is its declaration (``MUON``), from which its class and
its row in ``optim.registry.SHAPED_RULES`` are made (``optim.matrix_rule``); the engine of the shape
(``optim.matrix``) runs its momentum, its transform (Newton–Schulz: ``kernels.newton_schulz``) and its
apply. Its interface is the class: ``Muon.DEFAULTS``, ``Muon.IMPLS``, ``Muon.STATE`` and
``chosen_impl(params)``.
"""
import numbers

import torch

from fusedoptim.kernels.newton_schulz import newton_schulz
from fusedoptim.optim.matrix_rule import MatrixRule
from fusedoptim.optim.reference.muon import adjusted_lr, muon
from fusedoptim.optim.reference.muon import newton_schulz as reference_newton_schulz

DEFAULT_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan's quintic, torch's defaults
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


DOC = """Muon (Jordan et al. 2024), torch.optim.Muon's twin: momentum, orthogonalized by Newton–Schulz
iterations, for 2-D params only (use a second optimizer, e.g. fo.AdamW, for biases, norms and
embeddings). Its equations: ``fusedoptim.optim.reference.muon``.

lr=1e-3: γ; a float or a 1-element tensor (read on the host at each step, as torch's).
weight_decay=0.1: λ, decoupled: θ ← (1 − γλ)θ.
momentum=0.95: μ.
nesterov=True: orthogonalize (1 − μ)g + μB instead of B.
ns_coefficients=(3.4445, -4.7750, 2.0315): (a, b, c) of the quintic X ← aX + (bA + cA²)X.
eps=1e-7: the norm that X is divided by first is at least ε.
ns_steps=5: Newton–Schulz iterations, 0 to 99.
adjust_lr_fn=None: None or "original" scales γ by √max(1, rows/cols); "match_rms_adamw" by
    0.2·√max(rows, cols) (Liu et al. 2025).
impl="auto" (keyword-only): "reference" runs the oracle (torch's ops); "triton" the momentum and
    the apply as multi-tensor launches and Newton–Schulz as the Triton kernels (fp32, bf16 or fp16
    contiguous params on a CUDA device, or the CPU with TRITON_INTERPRET=1); "auto" the kernels
    where they run, the reference elsewhere. Settable on a built optimizer, checked.
state_dtype=None (keyword-only): None keeps the momentum buffer in the param's dtype, as torch;
    "int8" or "int4" keeps it as codes (``state["momentum_buffer"]``) and fp32 scales
    (``state["momentum_buffer_scale"]``), the registry's "signed" scheme (``optim.quantization``),
    in both impls. FSDP2 params: each rank codes its shard where a row is whole blocks (256 elements
    at int8, 128 at int4), else every rank keeps the whole momentum's codes (docs/muon.md).
stochastic_rounding=False (keyword-only): bf16 and fp16 params are stored rounded stochastically
    (unbiased) by the apply, reproducibly from ``seed``, so that updates below half a unit still move
    them on average; the momentum buffer rounds to nearest, as torch's.
seed=0 (keyword-only): the seed of stochastic rounding's random bits, an integer in [0, 2**31).
master_weight_bits=None (keyword-only, bf16 and fp16 params): 32 or 24 keeps θ's fp32 master as θ
    plus an int16 or int8 residual (``state["master_residual"]``), which the apply steps in fp32; the
    momentum stays in the param's dtype (docs/mixed-precision.md). Not with stochastic_rounding.
"""


def checked(arguments) -> dict:
    """Muon's own arguments checked (torch refuses ns_steps, ns_coefficients and eps at the first step, or
    never: here at construction, before anything runs); the coefficients kept as a tuple."""
    adjust_lr_fn, ns_steps, ns_coefficients, eps = (arguments[name] for name in
                                                   ("adjust_lr_fn", "ns_steps", "ns_coefficients", "eps"))
    if adjust_lr_fn not in ADJUST_LR_FNS:  # torch's words
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported; use one of {ADJUST_LR_FNS}")
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, numbers.Integral) or not 0 <= ns_steps < 100:
        raise ValueError(f"Muon: ns_steps={ns_steps!r} must be an integer from 0 to 99")
    if len(ns_coefficients) != 3 or not all(isinstance(v, numbers.Real) for v in ns_coefficients):
        raise ValueError(f"Muon: ns_coefficients={ns_coefficients!r} must be three numbers (a, b, c)")
    if not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"Muon: eps={eps!r} must be a number ≥ 0")
    return {**arguments, "ns_coefficients": tuple(ns_coefficients)}


def orthogonalize(stack, group) -> None:
    """O = NS_k(U) for a stack of same-shape matrices, in place: one launch per matrix product."""
    newton_schulz(stack, stack, group["ns_coefficients"], group["ns_steps"], group["eps"])


def orthogonalized(matrix, group):
    """The oracle's NS_k(U) of one matrix (bf16)."""
    return reference_newton_schulz(matrix, group["ns_coefficients"], group["ns_steps"], group["eps"])


def shape_adjusted_lr(lr, group, shape) -> float:
    return adjusted_lr(lr, group["adjust_lr_fn"], shape)


MUON = MatrixRule(
    name="Muon",
    summary="Momentum orthogonalized by Newton–Schulz iterations, for 2-D params (Jordan et al. 2024; lr adjusted "
            "to AdamW's RMS: Liu et al. 2025)",
    doc=DOC,
    reference=muon, transform=orthogonalize, transform_reference=orthogonalized, adjusted_lr=shape_adjusted_lr,
    defaults=dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=DEFAULT_COEFFICIENTS,
                  eps=1e-7, ns_steps=5, adjust_lr_fn=None),
    checked=checked,
    torch_twin=torch.optim.Muon,
    bad_arguments=((dict(ns_steps=100), "ns_steps=100"), (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
                   (dict(adjust_lr_fn="sqrt"), "Adjust learning rate function sqrt")),
    # NS_k runs in bf16, as torch's; the tiles sum in another order than torch's matmul, so an element now and
    # then rounds to the neighbouring bf16 value and five iterations carry that on: 4 bf16 steps (test_muon).
    transform_atol=2 ** -6,
)
Muon = MUON.optimizer
