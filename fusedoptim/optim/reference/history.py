r"""The history shape's step (``optim.rule.SHAPES``: a closure, and a history of past vectors), written
once over vector operations: ``history_step`` runs a rule's math (``HistoryMath``) on ``FlatVectors``
(torch's ops on flat vectors: the oracle) or on the fused impl's launches (``optim.history``). It is
torch.optim.LBFGS's loop, with the rule's parts taken out (``reference.lbfgs`` declares L-BFGS's):

    f, g ← closure();  stop if ‖g‖_∞ ≤ tolerance_grad
    repeat up to max_iter times (and max_eval evaluations of the closure):
        first iteration ever:  d ← −g;  H ← new_history();  g_prev ← g
        later:  y ← g − g_prev;  g_prev ← g;  s ← t·d (the last move)
                update_history(H, s, y);   d ← direction(g, H)
        t ← step_length(g, lr, H, first)
        stop if ⟨g, d⟩ > −tolerance_change (d is no descent direction)
        θ ← θ + t·d, t from the strong Wolfe line search where the group's line_search_fn asks for it;
        f, g ← closure() (not after the last iteration: torch skips it)
        stop if ‖g‖_∞ ≤ tolerance_grad, ‖t·d‖_∞ ≤ tolerance_change or |f − f_prev| < tolerance_change

The state (``func_evals``, ``n_iter``, ``d``, ``t``, the rule's history, ``prev_flat_grad``,
``prev_loss``) lives, as torch's, in the first param's state; its vectors are flat.
"""
from typing import Callable, NamedTuple

import torch

from fusedoptim.optim.reference.strong_wolfe import strong_wolfe


class HistoryMath(NamedTuple):
    """A history rule's parts, each written once over the vector operations (``FlatVectors``'s)."""
    history: tuple  # the names of its history in the state, as the step stores them
    new_history: Callable  # group -> the history's values at the first iteration ever (a dict)
    update_history: Callable  # (vectors, history, s, y, group): the newest pair in, in place
    direction: Callable  # (vectors, g, history, group) -> d, after the first iteration ever
    step_length: Callable  # (vectors, g, lr, history, first) -> t, before any line search


def real_view(tensor):
    """A complex tensor as torch.optim.LBFGS steps it: its real and imaginary parts, interleaved."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def dense_gradient(param):
    """``param``'s gradient, dense; zeros for a param without one (torch's LBFGS moves it by 0)."""
    if param.grad is None:
        return torch.zeros_like(param, memory_format=torch.contiguous_format)
    return param.grad.to_dense() if param.grad.is_sparse else param.grad


class FlatVectors:
    """The vector operations of L-BFGS as torch.optim.LBFGS does them: a vector is one flat tensor of
    every param's elements in order (a complex param's as its real and imaginary parts)."""

    def __init__(self, params):
        self.originals = list(params)  # where the gradients are: a complex param's real view has none
        self.params = [real_view(p) for p in self.originals]

    def gradient(self):
        """The gradients as one new vector (zeros for a param without one), as torch gathers them."""
        return torch.cat([real_view(dense_gradient(p)).reshape(-1) for p in self.originals])

    def add_to_params(self, t, d):
        """θ ← θ + t·d, param by param."""
        offset = 0
        for p in self.params:
            p.add_(d[offset: offset + p.numel()].view_as(p), alpha=t)
            offset += p.numel()

    def clone_params(self):
        return [p.clone(memory_format=torch.contiguous_format) for p in self.params]

    def set_params(self, values):
        for p, value in zip(self.params, values, strict=True):
            p.copy_(value)

    def abs_max(self, v):
        return v.abs().max()

    def abs_sum(self, v):
        return v.abs().sum()

    def dot(self, a, b):
        return a.dot(b)

    def clone(self, v):
        return v.clone(memory_format=torch.contiguous_format)

    def scaled(self, v, a):
        """a·v, a new vector."""
        return v.mul(a)

    def add_scaled_(self, x, a, y):
        """x ← x + a·y, in place."""
        x.add_(y, alpha=a)

    def gradient_difference(self, g, g_prev):
        """y = g − g_prev, a new vector; then g_prev ← g."""
        y = g.sub(g_prev)
        g_prev.copy_(g)
        return y


def history_step(closure, vectors, state, group, math):
    """One step of a history rule (``math``): up to max_iter iterations of direction, step length and
    move, with ``closure`` (which recomputes the loss and the gradients) evaluated where torch.optim.LBFGS
    evaluates it. ``vectors``: the vector operations (``FlatVectors``, or the fused impl's). ``state``:
    the first param's state, read and written; the history is stored back at the end, as torch's
    locals are. Returns the closure's first loss, as torch."""
    lr = group["lr"].squeeze() if isinstance(group["lr"], torch.Tensor) else group["lr"]  # torch's _to_scalar
    max_iter, max_eval = group["max_iter"], group["max_eval"]
    tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
    line_search_fn = group.get("line_search_fn")  # a rule that declares it gets the strong Wolfe search
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)

    orig_loss = closure()  # f and g at the start
    loss = float(orig_loss)
    current_evals = 1
    state["func_evals"] += 1
    flat_grad = vectors.gradient()
    if vectors.abs_max(flat_grad) <= tolerance_grad:  # already optimal: nothing moves, nothing is stored
        return orig_loss

    d, t = state.get("d"), state.get("t")
    history = {name: state[name] for name in math.history if name in state}
    prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1
        first = state["n_iter"] == 1
        if first:  # the first iteration ever: steepest descent, an empty history
            d = vectors.scaled(flat_grad, -1)  # d = −g
            history.update(math.new_history(group))
            prev_flat_grad = vectors.clone(flat_grad)  # g_prev ← g
        else:
            y = vectors.gradient_difference(flat_grad, prev_flat_grad)  # y = g − g_prev; g_prev ← g
            s = vectors.scaled(d, t)  # s = t·d, the last move
            math.update_history(vectors, history, s, y, group)
            d = math.direction(vectors, flat_grad, history, group)
        prev_loss = loss

        t = math.step_length(vectors, flat_grad, lr, history, first)
        gtd = vectors.dot(flat_grad, d)  # ⟨g, d⟩, the directional derivative
        if gtd > -tolerance_change:  # d is no descent direction
            break

        ls_func_evals = 0
        if line_search_fn is not None:
            x_init = vectors.clone_params()

            def evaluate(x, t, d):  # f and g at x + t·d; the params back at x
                vectors.add_to_params(t, d)
                value = float(closure())
                gradient = vectors.gradient()
                vectors.set_params(x)
                return value, gradient

            loss, flat_grad, t, ls_func_evals = strong_wolfe(vectors, evaluate, x_init, t, d, loss, flat_grad, gtd,
                                                             max_ls=max_eval - current_evals)
            vectors.add_to_params(t, d)  # θ ← θ + t·d
            opt_cond = vectors.abs_max(flat_grad) <= tolerance_grad
        else:
            vectors.add_to_params(t, d)  # θ ← θ + t·d
            if n_iter != max_iter:  # the last iteration's f and g would go unused: torch skips them
                with torch.enable_grad():
                    loss = float(closure())
                flat_grad = vectors.gradient()
                opt_cond = vectors.abs_max(flat_grad) <= tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals
        state["func_evals"] += ls_func_evals

        if n_iter == max_iter or current_evals >= max_eval or opt_cond:
            break
        if vectors.abs_max(d) * abs(t) <= tolerance_change:  # ‖t·d‖_∞: the move became negligible
            break
        if abs(loss - prev_loss) < tolerance_change:  # so did the change of f
            break

    state.update(d=d, t=t)
    state.update(history)
    state.update(prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
    return orig_loss
