import torch

from fusedoptim.optim.param_groups import PARAM_KINDS, param_kind, row_length
from fusedoptim.optim.reference import cautious, upcast
from fusedoptim.optim.schedule import piecewise_linear


def tiger(params, grads, states, group):
    r"""Tiger, the "tight-fisted optimizer" (Su Jianlin 2023, https://kexue.fm/archives/9512;
    the original is bojone/tiger's tiger.py).

    t counts micro-steps from 0, k = grad_accum_steps, β = beta, s = shrink_ratio, S = lr_schedule:

    .. math::
        b_1 = β \text{ if } t \bmod k = 0 \text{ else } 1, \qquad b_2 = (1 − β)/k,
        \qquad η_t = η\,S(t) \text{ if } (t + 1) \bmod k = 0 \text{ else } 0,
        m ← b_1 m + b_2 g, \qquad θ ← θ − η'_t\,(\mathrm{sign}(m) + λ' θ).

    Per tensor, by its param_kind (``optim.param_groups.PARAM_KINDS``; "auto": ndim ≤ 1 is a bias):
    bias and normalization tensors take η' = η_t/2 and λ' = 0; matrices take η' = η_t·RMS(θ) and
    λ' = λ; embedding tables η' = η_t·RMS(θ) of each row and λ' = λ. RMS(x) = √mean(x²), of θ before
    this step. S: ``optim.schedule.piecewise_linear``. NaN guard: if g has a NaN, m is kept and
    θ ← (θ − c)·s + c, with the center c = 1 for normalization weights and 0 otherwise, on every
    micro-step; the tensor's nan_skips counts it. With cautious (grad_accum_steps = 1), sign(m) is
    masked by its agreement with g (``reference.cautious``; the decay is not).
    State per param: step (the optimizer's micro-steps, counted once for every param: one tensor per
    device, as the original's `iterations`), nan_skips (fp32 scalar tensors) and m.
    """
    lr, beta, weight_decay = float(group["lr"]), group["beta"], group["weight_decay"]
    k, shrink_ratio = group["grad_accum_steps"], group["shrink_ratio"]
    for param, grad, state in zip(params, grads, states):
        t = int(state["step"].item()) - 1  # micro-steps before this one (the optimizer counted this one)
        lr_scale, decay, center = PARAM_KINDS[param_kind(param, group)]
        theta, g, m = upcast(param), upcast(grad), upcast(state["m"])
        if torch.isnan(g).any():  # NaN guard: keep m, shrink θ toward its center
            param.copy_((theta - center) * shrink_ratio + center)
            state["nan_skips"] += 1
            continue
        b1 = beta if t % k == 0 else 1.0  # the first micro-step of a cycle decays m
        b2 = (1 - beta) / k  # so that k micro-steps sum to (1 − β)·mean gradient
        eta = lr * piecewise_linear(t, group["lr_schedule"]) if (t + 1) % k == 0 else 0.0  # the last one moves θ
        if lr_scale is None:  # a matrix: η·RMS(θ) of the whole tensor
            lr_scale = theta.pow(2).mean().sqrt()
        elif lr_scale == "row":  # an embedding table: η·RMS(θ) of each row
            rows = theta.reshape(-1, row_length(param))
            lr_scale = rows.pow(2).mean(dim=-1, keepdim=True).sqrt().expand_as(rows).reshape(param.shape)
        m = b1 * m + b2 * g
        direction = cautious(torch.sign(m), g, group)  # masked where it disagrees with g, with caution
        theta = theta - eta * lr_scale * (direction + decay * weight_decay * theta)
        param.copy_(theta)
        state["m"].copy_(m)
