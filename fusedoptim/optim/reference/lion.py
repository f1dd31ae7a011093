from fusedoptim.optim.reference import cautious, sign, upcast


def lion(params, grads, states, group):
    r"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023), as lion-pytorch.

    .. math::
        θ ← θ(1 − ηλ), \qquad c = β_1 m + (1 − β_1) g, \qquad θ ← θ − η\,\mathrm{sign}(c),
        \qquad m ← β_2 m + (1 − β_2) g.

    With decoupled_weight_decay (lion-pytorch's), λ is relative to η₀, the lr given at construction:
    θ ← θ(1 − η_t λ/η₀), a decay of λ per step while the lr stays η₀, scaled by a schedule's η_t/η₀.
    With cautious, the step η·sign(c) is masked by its agreement with g (``reference.cautious``).
    State per param: exp_avg (m).
    """
    lr, (beta1, beta2), weight_decay = float(group["lr"]), map(float, group["betas"]), group["weight_decay"]
    if group["decoupled_weight_decay"]:
        weight_decay = weight_decay / float(group["lr_at_construction"])  # λ/η₀
    for param, grad, state in zip(params, grads, states):
        theta, g, exp_avg = upcast(param), upcast(grad), upcast(state["exp_avg"])
        theta = theta * (1 - lr * weight_decay)  # decoupled weight decay
        update = sign(beta1 * exp_avg + (1 - beta1) * g)  # sign of the interpolated momentum
        theta = theta - cautious(lr * update, g, group)  # masked where it disagrees with g, with caution
        exp_avg = beta2 * exp_avg + (1 - beta2) * g  # the momentum moves with the slower β2
        param.copy_(theta)
        state["exp_avg"].copy_(exp_avg)
