"""L-BFGS's vector operations as the multi-tensor launcher's ``update`` and ``reduce`` functions.

L-BFGS is no element-wise rule: its two-loop recursion (``optim.reference.lbfgs``) is a chain of dot
products and axpys over the whole parameter vector, each needing the previous one's result. Each is one
launch over every param (``optim.lbfgs``): the launcher's slots are reused for vectors, not for a rule's
θ and its states. In an ``update``, ``param`` is the vector written (x), ``grad`` the vector read (y),
``scalars[0]`` the coefficient, a 0-d fp32 device tensor (the same one for every tensor of the launch).
In a ``reduce``, the one output is a 0-d fp32 device tensor that every tensor's part is added into.
"""
import triton
import triton.language as tl


@triton.jit
def scaled(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return scalars[0] * grad, ()  # x ← a·y: a copy (a = 1), a negation (a = −1), s = t·d


@triton.jit
def add_scaled(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return param + scalars[0] * grad, ()  # x ← x + a·y: the two loops' axpys, θ ← θ + t·d


@triton.jit
def gradient_difference(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return grad - states[0], (grad,)  # y ← g − g_prev, and g_prev ← g in the same pass


@triton.jit
def dot(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return (param * grad,)  # ⟨x, y⟩


@triton.jit
def abs_sum(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    return (tl.abs(grad),)  # ‖y‖₁
