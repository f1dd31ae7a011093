import math

from fusedoptim.optim.reference import upcast


def sparse_adam(params, grads, states, group):
    r"""SparseAdam (Adam, Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, masked
    to the entries a sparse gradient holds), as torch.optim.SparseAdam and its ``_functional.sparse_adam``.

    With g ← −g if maximize, its duplicate indices summed, and S the entries it holds (a held zero
    included: the layout, not the values, decides), on S only:

    .. math::
        m ← β_1 m + (1-β_1) g, \qquad v ← β_2 v + (1-β_2) g^2,
        θ ← θ - η \frac{\sqrt{1-β_2^t}}{1-β_1^t} \cdot \frac{m}{\sqrt{v} + ε}.

    Outside S, θ, m and v stay exactly as they are (not decayed). No weight decay, no amsgrad. The
    grads are sparse COO tensors (the row's only_sparse_gradients); an empty one leaves its param
    alone, though its step counts. State per param: step (fp32 scalar tensor), exp_avg, exp_avg_sq.
    """
    lr, (beta1, beta2), eps = float(group["lr"]), map(float, group["betas"]), group["eps"]
    for param, grad, state in zip(params, grads, states):
        step = state["step"].item()  # already counts this step (the optimizer counts): 1 on the first
        grad = (-grad if group["maximize"] else grad).coalesce()  # the update is not linear: indices unique
        indices = grad.indices()  # coalesced: the public accessors (torch's own code uses _indices())
        if indices.shape[1] == 0:
            continue  # nothing held, nothing moves (torch's skip)
        held = tuple(indices)  # S, as an index into the dense tensors: one row per held entry
        g = upcast(grad.values())  # all math in fp32, whatever the storage dtype
        exp_avg, exp_avg_sq = upcast(state["exp_avg"][held]), upcast(state["exp_avg_sq"][held])
        exp_avg = exp_avg + (g - exp_avg) * (1 - beta1)  # m ← m + (1 − β1)(g − m): torch's order
        exp_avg_sq = exp_avg_sq + (g * g - exp_avg_sq) * (1 - beta2)  # v ← v + (1 − β2)(g² − v)
        denom = exp_avg_sq.sqrt() + eps  # √v + ε, ε after the root and before any bias correction
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)  # η·√(1 − β2ᵗ)/(1 − β1ᵗ), on the host
        theta = upcast(param[held]) - step_size * (exp_avg / denom)  # θ ← θ − step_size·m/denom on S
        param[held] = theta.to(param.dtype)
        state["exp_avg"][held] = exp_avg.to(state["exp_avg"].dtype)
        state["exp_avg_sq"][held] = exp_avg_sq.to(state["exp_avg_sq"].dtype)
