r"""L-BFGS, the oracle: its parts of the history shape's step (``LBFGS_MATH``: the history update and
the two-loop direction), written once over vector operations, and ``lbfgs_step``, the shape's step
(``reference.history``) with them on ``FlatVectors``, torch's ops on flat vectors: torch.optim.LBFGS's
step, bit for bit.

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

from fusedoptim.optim.reference.history import FlatVectors, HistoryMath, dense_gradient, history_step, real_view

HISTORY = ("old_dirs", "old_stps", "ro", "H_diag", "al")  # torch's names; α_i ("al") is the loops' scratch
CURVATURE = 1e-10  # ⟨y, s⟩ above it, or the pair is dropped


def new_history(group) -> dict:
    """The first iteration ever: no pair, γ = 1."""
    return dict(old_dirs=[], old_stps=[], ro=[], H_diag=1)


def update_history(vectors, history, s, y, group) -> None:
    """The newest pair (s, y) in where ⟨y, s⟩ > 1e-10, the oldest out at history_size; ρ and γ with it."""
    old_dirs, old_stps, ro = history["old_dirs"], history["old_stps"], history["ro"]
    ys = vectors.dot(y, s)  # ⟨y, s⟩
    if ys > CURVATURE:  # the curvature condition: only such pairs keep H positive definite
        if len(old_dirs) == group["history_size"]:  # the oldest pair leaves
            old_dirs.pop(0)
            old_stps.pop(0)
            ro.pop(0)
        old_dirs.append(y)
        old_stps.append(s)
        ro.append(1.0 / ys)  # ρ = 1/⟨y, s⟩
        history["H_diag"] = ys / vectors.dot(y, y)  # γ = ⟨y, s⟩/⟨y, y⟩, the scale of the initial H


def two_loop_direction(vectors, flat_grad, history, group):
    """d = −H·g by the two-loop recursion (N&W algorithm 7.4), newest pair first, then oldest first."""
    old_dirs, old_stps, ro, H_diag = history["old_dirs"], history["old_stps"], history["ro"], history["H_diag"]
    num_old = len(old_dirs)
    if "al" not in history:
        history["al"] = [None] * group["history_size"]
    al = history["al"]
    q = vectors.scaled(flat_grad, -1)  # q ← −g
    for i in range(num_old - 1, -1, -1):  # newest pair first
        al[i] = vectors.dot(old_stps[i], q) * ro[i]  # α_i = ρ_i·⟨s_i, q⟩
        vectors.add_scaled_(q, -al[i], old_dirs[i])  # q ← q − α_i·y_i
    d = r = vectors.scaled(q, H_diag)  # r ← γ·q
    for i in range(num_old):  # oldest pair first
        be_i = vectors.dot(old_dirs[i], r) * ro[i]  # β_i = ρ_i·⟨y_i, r⟩
        vectors.add_scaled_(r, al[i] - be_i, old_stps[i])  # r ← r + (α_i − β_i)·s_i
    return d


def step_length(vectors, flat_grad, lr, history, first):
    if first:  # the first step is at most lr along the normalised gradient
        return min(1.0, 1.0 / vectors.abs_sum(flat_grad)) * lr
    return lr


LBFGS_MATH = HistoryMath(HISTORY, new_history, update_history, two_loop_direction, step_length)


def lbfgs_step(closure, vectors, state, group):
    """One torch.optim.LBFGS step (``reference.history.history_step`` with ``LBFGS_MATH``). ``vectors``:
    the vector operations (``FlatVectors`` here). ``state``: the first param's state, read and written.
    Returns the closure's first loss, as torch."""
    return history_step(closure, vectors, state, group, LBFGS_MATH)


__all__ = ["FlatVectors", "LBFGS_MATH", "dense_gradient", "lbfgs_step", "real_view"]
