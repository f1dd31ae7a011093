"""``Adafactor``: torch.optim.Adafactor's twin, with its arguments, defaults and state (a state_dict
loads both ways): ``row_var`` and ``col_var`` for a param of 2+ dims, O(n + m) for an n × m matrix,
``variance`` for the others. Its equations are the oracle's (``optim.reference.adafactor``).

Adafactor is a rule of the factored shape: this module is its declaration (``ADAFACTOR``), from which its
class and its row in ``optim.registry.SHAPED_RULES`` are made (``optim.factored_rule``); the engine of the
shape (``optim.factored``) runs its math (``kernels.adafactor``) in four phases of launches, and reads its
step size −α/denom (the relative step size and the RMS clipping) on the host, as torch computes it, in
Python floats from Σθ² and Σu²: one host sync per group and step (torch makes two per param).
Its interface is the class: ``Adafactor.DEFAULTS``, ``Adafactor.IMPLS``, ``Adafactor.STATE``,
``chosen_impl()``.
"""
import math

import torch

from fusedoptim.kernels import adafactor as kernels
from fusedoptim.optim.factored_rule import FactoredMath, FactoredRule
from fusedoptim.optim.reference.adafactor import adafactor, resolved_eps1

DOC = """Adafactor (Shazeer & Stern 2018), torch.optim.Adafactor's twin: the same arguments, defaults,
    state and arithmetic; the equations in ``fusedoptim.optim.reference.adafactor``.

    lr=1e-2: the cap of the relative step size ρ_t = min(lr, 1/√t), and the decay's scale; a float or
        a 1-element tensor (read on the host each step, as torch).
    beta2_decay=-0.8: τ ≤ 0, the second moment's weight t^τ at step t.
    eps=(None, 1e-3): ε₁ floors mean(R) and √V̂ (None: the params' dtype's machine epsilon); ε₂ floors
        RMS(θ) in the step size α_t = max(ε₂, RMS(θ))·ρ_t.
    d=1.0: the update is clipped to RMS ≤ d.
    weight_decay=0.0: θ ← θ(1 − lr·λ) before the update.
    foreach=None: torch's switch; accepted, not stored (the impl decides).
    maximize=False: ascend instead.
    impl="auto" (keyword-only): "reference" the oracle; "triton" the launches (fp32, bf16 or fp16
        contiguous params on one CUDA device, or the CPU with TRITON_INTERPRET=1; the state in the
        param's dtype, as torch's; FSDP2 shards too); "auto" the kernels where they run.
    state_dtype=None (keyword-only): None keeps every statistic in the param's dtype, as torch; "int8" or
        "int4" keeps a vector's ``variance`` as codes (``state["variance"]``) and fp32 scales
        (``state["variance_scale"]``), the registry's "nonnegative" scheme (``optim.quantization``), in
        both impls. ``row_var`` and ``col_var`` stay in the param's dtype: O(n + m), already small. An
        FSDP2 (DTensor) vector with a quantized variance is stepped whole on every rank (``optim.whole``).
    """


def checked(arguments) -> dict:
    """torch's checks, in its order and words (and foreach's), -> the group's defaults (foreach not kept)."""
    lr, beta2_decay, eps, d, weight_decay, foreach = (arguments[name] for name in
                                                      ("lr", "beta2_decay", "eps", "d", "weight_decay", "foreach"))
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"Adafactor: eps={eps!r} must be a pair (epsilon1 or None, epsilon2)")
    if not 0.0 <= lr:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 >= beta2_decay:
        raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
    if eps[0] is not None and not 0.0 <= eps[0]:
        raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
    if not 0.0 <= eps[1]:
        raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
    if not 1.0 <= d:
        raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
    if foreach not in (None, True, False):
        raise ValueError(f"Adafactor: foreach={foreach!r} must be None, True or False")
    return dict(lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d, weight_decay=weight_decay,
                maximize=arguments["maximize"])


def hyper(group, lr, eps1):
    return (kernels.AdafactorHyper(eps1_squared=eps1 * eps1, decay=float(1 - lr * group["weight_decay"])),
            kernels.AdafactorFlags(MAXIMIZE=bool(group["maximize"])))


def step_size(group, lr, t, numel, theta_square, update_square) -> float:
    """−α_t/denom as torch computes it: α_t = max(ε₂, RMS(θ))·min(lr, 1/√t), denom = max(1, RMS(U)/d)."""
    alpha = max(group["eps"][1], math.sqrt(theta_square) / (numel ** 0.5)) * min(lr, 1 / (t ** 0.5))
    denom = max(1.0, math.sqrt(update_square) / ((numel ** 0.5) * group["d"]))
    return -alpha / denom


ADAFACTOR = FactoredRule(
    name="Adafactor",
    summary="Adam's second moment factored into row and column statistics, a relative step size and "
            "update clipping (Shazeer & Stern 2018)",
    doc=DOC, reference=adafactor,
    defaults=dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0),
    keyword_only=dict(foreach=None, maximize=False),
    checked=checked,
    math=FactoredMath(row_sums=kernels.square_sums, column_sums=kernels.column_square_sums,
                      factored_update=kernels.factored_update, vector_update=kernels.vector_update,
                      vector_sums=kernels.vector_sums, factored_sums=kernels.factored_update_squares),
    hyper=hyper, weight=lambda group, t: t ** group["beta2_decay"], floor=resolved_eps1, step_size=step_size,
    # A vector's variance is a running mean of squares: the "nonnegative" scheme (optim.quantization), as the
    # registry's exp_avg_sq and square_avg declare it. Round to nearest: no random draws.
    vector_kind="nonnegative",
    torch_twin=torch.optim.Adafactor,
    bad_arguments=((dict(beta2_decay=0.5), "beta2_decay should be <= 0"), (dict(d=0.5), "Clipping threshold d"),
                   (dict(eps=1e-3), "eps=0.001 must be a pair")),
)
Adafactor = ADAFACTOR.optimizer

__all__ = ["ADAFACTOR", "Adafactor"]
