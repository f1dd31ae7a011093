r"""L-BFGS, the oracle: torch.optim.LBFGS's step written once over vector operations, and
``FlatVectors``, those operations as torch's, on flat vectors of every param's elements.

Limited-memory BFGS (Liu & Nocedal 1989, "On the limited memory BFGS method for large scale
optimization"; Nocedal & Wright, Numerical Optimization, 2nd ed., ch. 7). With the last m pairs
s_i = x_{i+1} − x_i (``old_stps``) and y_i = g_{i+1} − g_i (``old_dirs``), ρ_i = 1/⟨y_i, s_i⟩ (``ro``),
the direction d = −H·g, H the inverse-Hessian estimate, is the two-loop recursion (N&W algorithm 7.4):

    q ← −g
    for i = m−1, …, 0:   α_i ← ρ_i·⟨s_i, q⟩;   q ← q − α_i·y_i
    r ← γ·q,   γ = ⟨y, s⟩ / ⟨y, y⟩ of the newest pair (``H_diag``; 1 before the first)
    for i = 0, …, m−1:   β_i ← ρ_i·⟨y_i, r⟩;   r ← r + (α_i − β_i)·s_i
    d ← r

A pair enters the history only if ⟨y, s⟩ > 1e-10 (the curvature condition, which keeps H positive
definite); the oldest leaves when m = history_size. The first iteration ever takes d = −g and
t = min(1, 1/‖g‖₁)·lr, later ones t = lr, or the strong Wolfe line search's t
(``reference.strong_wolfe``); then x ← x + t·d. One ``step(closure)`` runs up to max_iter iterations
and max_eval evaluations of the closure, stopping early where ‖g‖_∞ ≤ tolerance_grad, ⟨g, d⟩ >
−tolerance_change, ‖t·d‖_∞ ≤ tolerance_change or |f − f_prev| < tolerance_change.

Every operation, comparison and state is torch's, in its order: a state_dict moves both ways between
this and torch.optim.LBFGS. The state (``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs``,
``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``) lives, as torch's, in
the first param's state; its vectors are flat, in the params' dtype (fp32 for fp32 params).
"""
import torch

from fusedoptim.optim.reference.strong_wolfe import strong_wolfe


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


def lbfgs_step(closure, vectors, state, group):
    """One torch.optim.LBFGS step: up to max_iter iterations of direction, step length and move, with
    ``closure`` (which recomputes the loss and the gradients) evaluated where torch evaluates it.
    ``vectors``: the vector operations (``FlatVectors`` here). ``state``: the first param's state,
    read and written. Returns the closure's first loss, as torch."""
    lr = group["lr"].squeeze() if isinstance(group["lr"], torch.Tensor) else group["lr"]  # torch's _to_scalar
    max_iter, max_eval = group["max_iter"], group["max_eval"]
    tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
    line_search_fn, history_size = group["line_search_fn"], group["history_size"]
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
    old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
    H_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1
        if state["n_iter"] == 1:  # the first iteration ever: steepest descent, an empty history
            d = vectors.scaled(flat_grad, -1)  # d = −g
            old_dirs, old_stps, ro, H_diag = [], [], [], 1
            prev_flat_grad = vectors.clone(flat_grad)  # g_prev ← g
        else:
            y = vectors.gradient_difference(flat_grad, prev_flat_grad)  # y = g − g_prev; g_prev ← g
            s = vectors.scaled(d, t)  # s = t·d, the last move
            ys = vectors.dot(y, s)  # ⟨y, s⟩
            if ys > 1e-10:  # the curvature condition: only such pairs keep H positive definite
                if len(old_dirs) == history_size:  # the oldest pair leaves
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)  # ρ = 1/⟨y, s⟩
                H_diag = ys / vectors.dot(y, y)  # γ = ⟨y, s⟩/⟨y, y⟩, the scale of the initial H
            num_old = len(old_dirs)
            if "al" not in state:
                state["al"] = [None] * history_size
            al = state["al"]
            q = vectors.scaled(flat_grad, -1)  # q ← −g
            for i in range(num_old - 1, -1, -1):  # newest pair first
                al[i] = vectors.dot(old_stps[i], q) * ro[i]  # α_i = ρ_i·⟨s_i, q⟩
                vectors.add_scaled_(q, -al[i], old_dirs[i])  # q ← q − α_i·y_i
            d = r = vectors.scaled(q, H_diag)  # r ← γ·q
            for i in range(num_old):  # oldest pair first
                be_i = vectors.dot(old_dirs[i], r) * ro[i]  # β_i = ρ_i·⟨y_i, r⟩
                vectors.add_scaled_(r, al[i] - be_i, old_stps[i])  # r ← r + (α_i − β_i)·s_i
        prev_loss = loss

        if state["n_iter"] == 1:  # the first step is at most lr along the normalised gradient
            t = min(1.0, 1.0 / vectors.abs_sum(flat_grad)) * lr
        else:
            t = lr
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

    state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                 prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
    return orig_loss
