r"""Step sizes learned by exponentiated gradient: they grow where successive gradients agree, shrink where
they alternate, and collapse under gradient noise.

Claim (issue 8, item 3; seed 000: 苏剑林, "指数梯度下降 + 元学习 = 自适应学习率",
https://spaces.ac.cn/archives/8968, a simplified Amid, Anil, Fifty & Warmuth 2022). optim.EGStepSize:

.. math::
    ν_t = ν_{t−1} \odot \exp(γ\, g_{t−1} \odot g_t), \qquad θ_t = θ_{t−1} − η\, ν_t \odot g_t,
    \qquad ν_0 = 1,\; g_0 = 0.

On f(θ) = ½ Σ d_i θ_i² with d = (1, 10, 100), gradient descent at η = 0.015 moves coordinate i by the
factor 1 − η d_i = 0.985, 0.85, −0.5: the two flat coordinates creep (their successive gradients agree,
so ν grows) and the stiff one overshoots (its gradient flips sign, so ν shrinks). The start θ0 = (10, 1,
0.1) gives every coordinate the same first gradient, 10, so their step sizes differ only by curvature.
SGD at the same η is the comparison.

A reader of the seed reports the failure: on language-model pre-training the step sizes fell to 0,
because ⟨g_{t−1}, g_t⟩ was nearly always negative. With gradient noise, g_t = D θ_{t−1} + σ ξ_t, it must
be: the noise of step t−1 displaces θ, and the next gradient pushes it back. Near the optimum θ is an
AR(1) process, and with x = η ν d (stable for 0 < x < 2)

.. math:: E[g_{t−1} g_t] = −σ^2 \, x / (2 − x) < 0,

so log ν drifts down by γ σ² x/(2 − x) a step, with nothing to stop it: greedily, a smaller step always
lowers the next loss when the gradient is mostly noise. Once x ≪ 1 this reads dν/dt = −γσ²ηd ν²/2, so

.. math:: ν_i(t) ≈ 2 / (γ σ^2 η d_i t),

a decay like 1/t with no floor, fastest for the stiffest coordinate; the geometric mean of ν follows it with
the geometric mean of d. The run adds σ = 3 (the initial gradient is 10, the gradient near the optimum well
below σ) and compares the geometric mean of ν over several noise seeds with this law. γσ² = 0.09 is the
spread of one step's change of log ν; with much louder noise (σ = 10, γσ² = 1) a few positive products
lift ν past the stability limit 2/(ηd) first, and the run diverges instead.
"""
import math
import sys

import torch
from matplotlib import pyplot

from fusedoptim import optim
from scripts.reproductions import common

NAME = "eg_step_size"
CLAIM = ("EGStepSize grows the step where successive gradients agree, shrinks it where they alternate, "
         "and under gradient noise its step sizes collapse")
CURVATURES = (1.0, 10.0, 100.0)  # condition number 100
START = (10.0, 1.0, 0.1)  # the first gradient D θ0 is 10 in every coordinate
ROW_EVERY = 10  # steps between CSV rows: the noisy runs are long


def losses(thetas: torch.Tensor) -> list:
    """f(θ) of each row, in fp64: the clean EGStepSize run falls far below fp32's resolution of f."""
    return (0.5 * (torch.tensor(CURVATURES, dtype=torch.float64) * thetas.double() ** 2).sum(dim=1)).tolist()


def descend(optimizer_class, steps, noise=0.0, seed=0, impl="reference", **hyperparameters) -> dict:
    """``steps`` steps on f from START with gradients D θ + noise·N(0, 1): the loss after each step, and for
    EGStepSize the step sizes ν after each step and the products g_{t−1} ⊙ g_t they were multiplied by."""
    generator = torch.Generator().manual_seed(seed)
    curvatures = torch.tensor(CURVATURES)
    theta = torch.nn.Parameter(torch.tensor(START))
    optimizer = optimizer_class([theta], impl=impl, **hyperparameters)
    thetas, step_sizes, products, previous_grad = [], [], [], torch.zeros(len(CURVATURES))
    for _ in range(steps):
        grad = curvatures * theta.detach() + noise * torch.randn(len(CURVATURES), generator=generator)
        products.append(previous_grad * grad)
        previous_grad = grad
        theta.grad = grad
        optimizer.step()
        thetas.append(theta.detach().clone())
        if "step_size" in optimizer.state[theta]:
            step_sizes.append(optimizer.state[theta]["step_size"].clone())
    return dict(losses=losses(torch.stack(thetas)), step_sizes=torch.stack(step_sizes) if step_sizes else None,
                products=torch.stack(products), theta=theta.detach().clone())


def geometric_mean(step_sizes: torch.Tensor) -> torch.Tensor:
    """Per step, the geometric mean of ν over the coordinates: log ν is what the rule moves."""
    return step_sizes.double().log().mean(dim=1).exp()


def mean_field_geometric_mean(steps, lr, gamma, noise) -> torch.Tensor:
    """The law ν_i(t) ≈ 2/(γσ²ηd_i t) of the module docstring, averaged geometrically over i."""
    mean_curvature = torch.tensor(CURVATURES, dtype=torch.float64).log().mean().exp()
    return 2 / (gamma * noise**2 * lr * mean_curvature * torch.arange(1, steps + 1, dtype=torch.float64))


def first_non_finite(losses) -> int:
    """The first step whose loss is inf or NaN, 0 if there is none."""
    return next((step for step, value in enumerate(losses, 1) if not math.isfinite(value)), 0)


def run(out=None, lr=0.015, gamma=1e-2, clean_steps=100, noisy_steps=3000, noise=3.0, noise_seeds=(0, 1, 2),
        loud_noise=10.0, loud_steps=200, impl="reference") -> dict:
    """Clean and noisy EGStepSize runs against SGD at the same lr; the reference by default (12,000 steps
    under the Triton interpreter would take nine minutes; the test checks the kernel on a short stretch)."""
    egstepsize = dict(lr=lr, gamma=gamma, impl=impl)
    runs = dict(
        clean=descend(optim.EGStepSize, clean_steps, **egstepsize),
        clean_sgd=descend(optim.SGD, clean_steps, lr=lr, impl=impl),
        noisy=[descend(optim.EGStepSize, noisy_steps, noise, seed, **egstepsize) for seed in noise_seeds],
        noisy_sgd=descend(optim.SGD, noisy_steps, noise, noise_seeds[0], lr=lr, impl=impl),
        loud=descend(optim.EGStepSize, loud_steps, loud_noise, noise_seeds[0], **egstepsize))
    law = mean_field_geometric_mean(noisy_steps, lr, gamma, noise)
    results = summarise(runs, lr, law)
    figure = draw(runs, law, lr, gamma, noise, noise_seeds)
    common.save(NAME, figure, csv_rows(runs, noise_seeds), out)
    print_table(results, noise, noise_seeds, loud_noise, loud_steps)
    return results


def summarise(runs, lr, law) -> dict:
    clean, noisy = runs["clean"], runs["noisy"]
    curvatures = torch.tensor(CURVATURES)
    noisy_means = [geometric_mean(noisy_run["step_sizes"]) for noisy_run in noisy]
    tail = len(law) // 2  # the second half of the noisy runs: the loss has settled at its noise floor
    return dict(
        lr_times_curvature=lr * curvatures, clean_final_step_sizes=clean["step_sizes"][-1],
        clean_effective_steps=lr * clean["step_sizes"][-1] * curvatures, clean_products=clean["products"],
        clean_geometric_mean=float(geometric_mean(clean["step_sizes"])[-1]), clean_losses=clean["losses"],
        clean_sgd_losses=runs["clean_sgd"]["losses"],
        noisy_peak_geometric_means=[float(means.max()) for means in noisy_means],
        noisy_final_geometric_means=[float(means[-1]) for means in noisy_means],
        noisy_final_step_sizes=[noisy_run["step_sizes"][-1] for noisy_run in noisy],
        mean_field_final=float(law[-1]),
        noisy_tail_loss=sum(noisy[0]["losses"][tail:]) / (len(law) - tail),
        noisy_sgd_tail_loss=sum(runs["noisy_sgd"]["losses"][tail:]) / (len(law) - tail),
        loud_noise_diverged_at=first_non_finite(runs["loud"]["losses"]))


def draw(runs, law, lr, gamma, noise, noise_seeds):
    """Step sizes per coordinate, clean and noisy (with the geometric means and their law), and the losses."""
    clean, noisy = runs["clean"], runs["noisy"]
    clean_steps, noisy_steps = range(1, len(clean["losses"]) + 1), range(1, len(law) + 1)
    figure, (clean_axes, noisy_axes, loss_axes) = pyplot.subplots(1, 3, figsize=(15, 4.2))
    for i, curvature in enumerate(CURVATURES):
        label = f"d = {curvature:g} (η·d = {lr * curvature:g})"
        clean_axes.semilogy(clean_steps, clean["step_sizes"][:, i], color=f"C{i}", label=label)
        noisy_axes.semilogy(noisy_steps, noisy[0]["step_sizes"][:, i], color=f"C{i}", alpha=0.5, linewidth=0.8,
                            label=f"{label}, seed {noise_seeds[0]}")
    clean_axes.set(xscale="log", xlabel="step", ylabel="step size ν_i",
                   title=f"clean gradients, η = {lr:g}, γ = {gamma:g}")
    clean_axes.legend(fontsize=8)
    for seed, noisy_run, linestyle in zip(noise_seeds, noisy, ("-", "--", ":") * len(noise_seeds)):
        noisy_axes.semilogy(noisy_steps, geometric_mean(noisy_run["step_sizes"]), color="black", linewidth=1.2,
                            linestyle=linestyle, label=f"geometric mean of ν, seed {seed}")
    late = min(100, len(law))  # the law holds once η·ν·d ≪ 1
    noisy_axes.semilogy(noisy_steps[late - 1:], law[late - 1:], color="red", linestyle="--",
                        label="2 / (γσ²η t · geometric mean of d)")
    noisy_axes.set(xscale="log", ylim=(1e-3, 1e2), xlabel="step", ylabel="step size ν_i",
                   title=f"gradients + N(0, {noise:g}²) noise")
    noisy_axes.legend(fontsize=7)
    loss_axes.semilogy(clean_steps, clean["losses"], color="C0", label="EGStepSize, clean")
    loss_axes.semilogy(clean_steps, runs["clean_sgd"]["losses"], color="C1", label=f"SGD η = {lr:g}, clean")
    for name, curve, color in (("EGStepSize", noisy[0]["losses"], "C0"), ("SGD", runs["noisy_sgd"]["losses"], "C1")):
        loss_axes.semilogy(noisy_steps, curve, color=color, alpha=0.4, linewidth=0.6,
                           label=f"{name}, noise σ = {noise:g}, seed {noise_seeds[0]}")
    loss_axes.set(xscale="log", xlabel="step", ylabel="f(θ) = ½ θᵀ diag(1, 10, 100) θ", ylim=(1e-30, 1e3),
                  title="loss")
    loss_axes.legend(fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def csv_rows(runs, noise_seeds) -> list:
    clean, clean_sgd = runs["clean"], runs["clean_sgd"]
    rows = [dict(run="clean", seed="", step=step, **per_coordinate(clean["step_sizes"][step - 1]),
                 egstepsize_loss=clean["losses"][step - 1], sgd_loss=clean_sgd["losses"][step - 1])
            for step in range(1, len(clean["losses"]) + 1)]
    for seed, noisy_run in zip(noise_seeds, runs["noisy"]):
        rows += [dict(run="noisy", seed=seed, step=step, **per_coordinate(noisy_run["step_sizes"][step - 1]),
                      egstepsize_loss=noisy_run["losses"][step - 1])
                 for step in range(ROW_EVERY, len(noisy_run["losses"]) + 1, ROW_EVERY)]
    return rows


def per_coordinate(step_sizes) -> dict:
    return {f"step_size_d{curvature:g}": float(value) for curvature, value in zip(CURVATURES, step_sizes)}


def print_table(results, noise, noise_seeds, loud_noise, loud_steps):
    print(f"{'curvature d':>11} | {'η·d':>6} | {'clean ν':>8} | {'η·ν·d':>6} | "
          + " | ".join(f"noisy ν, seed {seed}" for seed in noise_seeds))
    for i, curvature in enumerate(CURVATURES):
        print(f"{curvature:>11g} | {results['lr_times_curvature'][i]:>6.3f} | "
              f"{results['clean_final_step_sizes'][i]:>8.4f} | {results['clean_effective_steps'][i]:>6.3f} | "
              + " | ".join(f"{step_sizes[i]:>16.3e}" for step_sizes in results["noisy_final_step_sizes"]))
    for step in sorted({10, 30, len(results["clean_losses"])}):
        print(f"clean loss after {step} steps: EGStepSize {results['clean_losses'][step - 1]:.3e}, "
              f"SGD {results['clean_sgd_losses'][step - 1]:.3e}")
    for seed, peak, final in zip(noise_seeds, results["noisy_peak_geometric_means"],
                                 results["noisy_final_geometric_means"]):
        print(f"noise σ = {noise:g}, seed {seed}: geometric mean of ν peaks at {peak:.3f}, ends at {final:.2e} "
              f"({peak / final:.0f}× lower; law 2/(γσ²ηdt): {results['mean_field_final']:.2e}; "
              f"clean run ends at {results['clean_geometric_mean']:.3f})")
    print(f"noisy second half, mean loss: EGStepSize {results['noisy_tail_loss']:.3e}, "
          f"SGD {results['noisy_sgd_tail_loss']:.3e}")
    diverged = results["loud_noise_diverged_at"]
    print(f"noise σ = {loud_noise:g}: " + (f"the iterate diverged (non-finite loss) at step {diverged}" if diverged
                                           else f"still finite after {loud_steps} steps"))


if __name__ == "__main__":
    common.main(sys.modules[__name__])
