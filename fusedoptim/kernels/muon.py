"""The matrix shape's element-wise halves (Muon's), as the multi-tensor launcher's ``update`` functions
(``optim.matrix`` launches them): the momentum before the matrix transform (Muon's Newton–Schulz:
``kernels.newton_schulz``), and the param update after it. The equations are the oracle's (``optim.reference.muon``).

``momentum``: ``param`` is the matrix handed to Newton–Schulz (written only), ``grad`` the gradient,
``states[0]`` the momentum buffer; ``hyper`` holds μ and 1 − μ, ``FLAGS.NESTEROV`` the option.
``apply_update``: ``param`` is θ, ``grad`` the orthogonalized update O, ``scalars`` the tensor's
(1 − lr·λ, adjusted lr).
"""
from typing import NamedTuple

import triton
import triton.language as tl


class MomentumHyper(NamedTuple):
    momentum: float  # μ
    one_minus_momentum: float  # 1 − μ, computed on the host in double as torch's buf.lerp_(g, 1 − μ) takes it


class MomentumFlags(NamedTuple):
    NESTEROV: bool


@triton.jit
def lerp(start, end, weight):
    """torch.lerp's formula, in its two halves (the one that stays exact at weight 0 or 1)."""
    if weight < 0.5:
        return start + weight * (end - start)
    else:
        return end - (end - start) * (1.0 - weight)


@triton.jit
def momentum(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    buffer = lerp(states[0], grad, hyper.one_minus_momentum)  # B ← μB + (1 − μ)g, torch's buf.lerp_(g, 1 − μ)
    if FLAGS.NESTEROV:
        return lerp(grad, buffer, hyper.momentum), (buffer,)  # g.lerp(B, μ): (1 − μ)g + μB
    else:
        return buffer, (buffer,)


@triton.jit
def apply_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    param = param * scalars[0]  # θ ← (1 − lr·λ)θ, decoupled weight decay, first, as torch's mul_
    return param - scalars[1] * grad, ()  # θ ← θ − adjusted_lr · O
