import torch

from kernels.tiger import is_bias_or_normalization


def tiger(params, grads, states, group):
    r"""Tiger, the "tight-fisted optimizer" (Su Jianlin 2023, https://kexue.fm/archives/9512;
    the original is bojone/tiger's tiger.py).

    t counts micro-steps from 0, k = grad_accum_steps, β = beta, s = shrink_ratio:

    .. math::
        b_1 = β \text{ if } t \bmod k = 0 \text{ else } 1, \qquad b_2 = (1 − β)/k,
        \qquad η_t = η \text{ if } (t + 1) \bmod k = 0 \text{ else } 0,
        m ← b_1 m + b_2 g, \qquad θ ← θ − η'_t\,(\mathrm{sign}(m) + λ' θ).

    Per tensor: bias and normalization tensors (ndim ≤ 1) take η' = η_t/2 and λ' = 0; every other
    tensor takes η' = η_t·RMS(θ) (of θ before this step) and λ' = λ. NaN guard: if g has a NaN, m
    is kept and θ ← (θ − c)·s + c, with the center c = 0, on every micro-step.
    State per param: step (micro-steps taken, fp32 scalar tensor) and m.
    """
    lr, beta, weight_decay = float(group["lr"]), group["beta"], group["weight_decay"]
    k, shrink_ratio = group["grad_accum_steps"], group["shrink_ratio"]
    for param, grad, state in zip(params, grads, states):
        t = int(state["step"].item())  # micro-steps taken before this one
        state["step"] += 1
        theta, g, m = param.float(), grad.float(), state["m"].float()
        if torch.isnan(g).any():  # NaN guard: keep m, shrink θ toward its center 0
            param.copy_(theta * shrink_ratio)
            continue
        b1 = beta if t % k == 0 else 1.0  # the first micro-step of a cycle decays m
        b2 = (1 - beta) / k  # so that k micro-steps sum to (1 − β)·mean gradient
        eta = lr if (t + 1) % k == 0 else 0.0  # only the last micro-step of a cycle moves θ
        if is_bias_or_normalization(param):
            eta, decay = eta / 2, 0.0
        else:
            eta, decay = eta * theta.pow(2).mean().sqrt().item(), weight_decay  # η·RMS(θ)
        m = b1 * m + b2 * g
        theta = theta - eta * (torch.sign(m) + decay * theta)
        param.copy_(theta)
        state["m"].copy_(m)
