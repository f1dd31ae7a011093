from fusedoptim.optim.reference import cautious, sign, upcast


def signum(params, grads, states, group):
    r"""Signum, the sign of momentum (Bernstein et al. 2018), with decoupled weight decay; β = momentum:

    .. math:: m ← β m + (1 − β) g, \qquad θ ← θ(1 − ηλ) − η\,\mathrm{sign}(m).

    With cautious, the step η·sign(m) is masked by its agreement with g (``reference.cautious``).
    State per param: exp_avg (m).
    """
    lr, beta, weight_decay = float(group["lr"]), group["momentum"], group["weight_decay"]
    for param, grad, state in zip(params, grads, states):
        g = upcast(grad)
        exp_avg = beta * upcast(state["exp_avg"]) + (1 - beta) * g  # momentum, then its sign
        step = cautious(lr * sign(exp_avg), g, group)  # masked where it disagrees with g, with caution
        param.copy_(upcast(param) * (1 - lr * weight_decay) - step)
        state["exp_avg"].copy_(exp_avg)
