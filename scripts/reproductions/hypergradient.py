r"""Hypergradient descent learns its own learning rate, from α0 = 0, on an ill-conditioned quadratic.

Claim (issue 8, item 4): SGDHD on f(θ) = ½ θᵀ diag(1, 10, 100) θ, started with α0 = 0 and
hypergrad_lr β = 1e-6, raises α (to about 0.0105 after 500 steps) and ends lower than fixed-lr gradient
descent at lr = 1e-3. Source: Baydin, Cornish, Martínez Rubio, Schmidt & Wood, "Online Learning Rate
Adaptation with Hypergradient Descent" (ICLR 2018), the first reference a reader gives under seed 000
(苏剑林, "指数梯度下降 + 元学习 = 自适应学习率", https://spaces.ac.cn/archives/8968). The rule, as
optim.SGDHD computes it (RULES.md):

.. math::
    g_t = D θ_{t−1}, \qquad α_t = α_{t−1} + β \langle g_t, g_{t−1} \rangle \;(g_0 = 0), \qquad
    θ_t = θ_{t−1} − α_t g_t.

⟨g_t, g_{t−1}⟩ = −∂f(θ_t)/∂α at α = α_{t−1}: α climbs while successive gradients agree and falls when
they alternate. From θ0 = (1, 1, 1) the second step already adds β‖g_1‖² = 1e-6 · (1 + 100 + 10⁴) ≈ 0.0101,
just past 1/100 where the stiff coordinate (curvature 100) starts to overshoot; the overshoot makes its
product negative and holds α near there while the slow coordinates keep adding a little. Gradient descent
at lr = 1e-3 shrinks the slowest coordinate only by 0.999 a step.
"""
import sys

import torch
from matplotlib import pyplot

from fusedoptim import optim
from scripts.reproductions import common

NAME = "hypergradient"
CLAIM = ("SGDHD from α0 = 0 with β = 1e-6 on ½θᵀdiag(1, 10, 100)θ raises α to ≈ 0.0105 in 500 steps "
         "and ends below gradient descent at lr = 1e-3")
CURVATURES = (1.0, 10.0, 100.0)  # the Hessian's diagonal: condition number 100
START = (1.0, 1.0, 1.0)


def loss(theta: torch.Tensor) -> float:
    """f(θ) = ½ Σ d_i θ_i², in fp64 so that the curve is not cut off at fp32's resolution."""
    curvatures = torch.tensor(CURVATURES, dtype=torch.float64)
    return 0.5 * float((curvatures * theta.double() ** 2).sum())


def descend(optimizer_class, steps, start=START, impl="reference", **hyperparameters) -> dict:
    """``steps`` optimizer steps on f from ``start``: the loss before and after each step, and the lr each
    step used (for SGDHD the learned α, read back from group["lr"])."""
    curvatures = torch.tensor(CURVATURES)
    theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
    optimizer = optimizer_class([theta], impl=impl, **hyperparameters)
    losses, lrs = [loss(theta.detach())], []
    for _ in range(steps):
        theta.grad = curvatures * theta.detach()  # ∇f, exact: no autograd needed for a quadratic
        optimizer.step()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        losses.append(loss(theta.detach()))
    return dict(losses=losses, lrs=lrs, theta=theta.detach().clone())


def run(out=None, steps=500, hypergrad_lr=1e-6, fixed_lr=1e-3, start=START, impl="reference") -> dict:
    """SGDHD (lr=0) against SGD at ``fixed_lr``; the reference by default: 1000 steps under the Triton
    interpreter would take about a minute, and the test checks the kernel agrees on a short stretch."""
    learned = descend(optim.SGDHD, steps, start, impl, lr=0.0, hypergrad_lr=hypergrad_lr)
    fixed = descend(optim.SGD, steps, start, impl, lr=fixed_lr)
    alphas = learned["lrs"]
    results = dict(alpha_after_1=alphas[0], alpha_after_2=alphas[1], alpha_final=alphas[-1],
                   alpha_max=max(alphas), loss_start=learned["losses"][0],
                   loss_final_sgdhd=learned["losses"][-1], loss_final_sgd=fixed["losses"][-1], steps=steps)

    figure, (alpha_axes, loss_axes) = pyplot.subplots(1, 2, figsize=(10, 4))
    step_numbers = range(1, steps + 1)
    alpha_axes.plot(step_numbers, alphas, label="SGDHD's learned α")
    alpha_axes.axhline(fixed_lr, color="C1", linestyle="--", label=f"SGD's fixed lr = {fixed_lr:g}")
    alpha_axes.axhline(1 / max(CURVATURES), color="grey", linestyle=":", label="1 / largest curvature")
    alpha_axes.set(xscale="log", xlabel="step", ylabel="learning rate α",
                   title=f"α from 0, β = {hypergrad_lr:g}")
    alpha_axes.legend()
    loss_axes.semilogy(range(steps + 1), learned["losses"], label="SGDHD (α0 = 0)")
    loss_axes.semilogy(range(steps + 1), fixed["losses"], label=f"SGD, lr = {fixed_lr:g}")
    loss_axes.set(xlabel="step", ylabel="f(θ) = ½ θᵀ diag(1, 10, 100) θ", title=f"loss from θ0 = {tuple(start)}")
    loss_axes.legend()
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    rows = [dict(step=step, sgdhd_alpha=alpha, sgdhd_loss=learned["losses"][step], sgd_lr=fixed_lr,
                 sgd_loss=fixed["losses"][step])
            for step, alpha in zip(step_numbers, alphas)]
    common.save(NAME, figure, rows, out)

    print(f"{'after step':>10} | {'SGDHD α':>10} | {'SGDHD loss':>11} | {'SGD loss':>11}")
    for step in sorted({1, 2, 10, 100, steps}):
        if step <= steps:
            print(f"{step:>10} | {alphas[step - 1]:>10.6f} | {learned['losses'][step]:>11.4e} | "
                  f"{fixed['losses'][step]:>11.4e}")
    return results


if __name__ == "__main__":
    common.main(sys.modules[__name__])
