from fusedoptim.optim.reference import sign, upcast


def signsgd(params, grads, states, group):
    r"""SignSGD (Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018)
    with decoupled weight decay:

    .. math:: θ ← θ(1 − ηλ) − η\,\mathrm{sign}(g).

    No state.
    """
    lr, weight_decay = float(group["lr"]), group["weight_decay"]
    for param, grad in zip(params, grads):
        param.copy_(upcast(param) * (1 - lr * weight_decay) - lr * sign(upcast(grad)))
