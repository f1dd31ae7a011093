from fusedoptim.optim.reference import sign, upcast


def signum(params, grads, states, group):
    r"""Signum, the sign of momentum (Bernstein et al. 2018), with decoupled weight decay; β = momentum:

    .. math:: m ← β m + (1 − β) g, \qquad θ ← θ(1 − ηλ) − η\,\mathrm{sign}(m).

    State per param: exp_avg (m).
    """
    lr, beta, weight_decay = float(group["lr"]), group["momentum"], group["weight_decay"]
    for param, grad, state in zip(params, grads, states):
        exp_avg = beta * upcast(state["exp_avg"]) + (1 - beta) * upcast(grad)  # momentum, then its sign
        param.copy_(upcast(param) * (1 - lr * weight_decay) - lr * sign(exp_avg))
        state["exp_avg"].copy_(exp_avg)
