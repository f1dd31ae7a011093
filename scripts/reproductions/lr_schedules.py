r"""Learning-rate decay helps Adam when its initial lr is large.

Seed 003_222e89654191eb88.txt ("Adam和学习率衰减") asks whether Adam, which already adapts a step per
parameter, still gains from decaying η, and answers: with a large initial lr yes, with a small one
hardly (after Loshchilov & Hutter, Section 4.1). It lists the decays it means, with t the step:

.. math::
    \text{exponential\_decay: } η_t = η_0\, r^{t/s}, \qquad
    \text{natural\_exp\_decay: } η_t = η_0\, e^{−k t/s},

and ReduceLROnPlateau: when the validation loss has not fallen by more than 1e-4 for ``patience``
epochs, η ← η·factor. Seed 001_3c208c4501433e21.txt adds warm-up (raise η from small to large first,
then decay). Seed 004_21bcd73060106028.txt's Tiger carries a piecewise-linear schedule.

Each is built from torch.optim.lr_scheduler, driving our optim.Adam:

- exponential decay: ExponentialLR(γ = r^{1/s}) gives η_0 γ^t = η_0 r^{t/s} (r = 0.1, s = T/2);
- natural exponential decay: ExponentialLR(γ = e^{−k/s}) (k = 1, s = T/5); it is the same family,
  exponential decay with r = e^{−k}; the seed lists it apart because TensorFlow has both;
- ReduceLROnPlateau(threshold_mode="abs", threshold=1e-4) on the validation loss every 50 steps.
  Keras (the seed's) reduces when ``wait >= patience``, torch when ``num_bad_epochs > patience``: the
  seed's patience p is torch's p − 1 (here torch's 2, the seed's 3);
- warm-up: LinearLR from η_0/100 to η_0 over T/20 steps, then ExponentialLR to η_0/100 at T,
  joined by SequentialLR;
- piecewise linear: our optim.PiecewiseLinearLR({T/20: 1, T: 0.01}): from 0 to η_0, then down.

The experiment: noisy linear regression, y = x·w* + ε with x ~ N(0, I_20), w* ~ N(0, I), ε ~ N(0, 1),
minibatches of 16 fresh samples, Adam from w = 0 at η_0 = 0.1 for T steps. Its test loss is
σ² + ‖w − w*‖², so we report the excess risk ‖w − w*‖². At a constant large η Adam's normalised
step m̂/√v̂ stays of order one however close w is, so w jitters around w* at a floor set by η;
a decayed η shrinks the jitter. A constant η_0/100 has no floor to speak of but is too slow to get
there. Several replicates (independent w*, data and validation sets) give the spread.
"""
import math
import sys
from typing import NamedTuple

import torch
from matplotlib import pyplot
from torch.optim import lr_scheduler

from fusedoptim import optim
from scripts.reproductions import common

NAME = "lr_schedules"
CLAIM = "Adam at a large lr stalls at a noise floor; each decay of the seeds lowers the final loss"

EPOCH = 50  # steps between validation losses, ReduceLROnPlateau's epochs
VALIDATION = 256  # validation samples per replicate


def settings(steps: int) -> dict:
    """Each schedule's constants, as fractions of the run, so that a shorter run decays as far."""
    warmup_steps = max(steps // 20, 1)
    return dict(
        exponential=dict(decay_rate=0.1, decay_steps=steps / 2),
        natural_exponential=dict(decay_rate=1.0, decay_steps=steps / 5),
        plateau=dict(factor=0.1, patience=2, threshold=1e-4),
        warmup=dict(start_factor=0.01, warmup_steps=warmup_steps, final_factor=0.01),
        piecewise={warmup_steps: 1.0, steps: 0.01},
        small_factor=0.01,
    )


def schedulers(steps: int) -> dict:
    """name -> (optimizer -> its scheduler, or None for a constant lr)."""
    knobs = settings(steps)
    exponential, natural, plateau, warmup = (knobs[key] for key in ("exponential", "natural_exponential",
                                                                     "plateau", "warmup"))

    def warmup_then_decay(optimizer):
        decay_steps = steps - warmup["warmup_steps"]
        return lr_scheduler.SequentialLR(optimizer, [
            lr_scheduler.LinearLR(optimizer, start_factor=warmup["start_factor"], total_iters=warmup["warmup_steps"]),
            lr_scheduler.ExponentialLR(optimizer, gamma=warmup["final_factor"] ** (1 / decay_steps)),
        ], milestones=[warmup["warmup_steps"]])

    return {
        "constant": lambda optimizer: None,
        "constant lr/100": lambda optimizer: lr_scheduler.ConstantLR(
            optimizer, factor=knobs["small_factor"], total_iters=steps),
        "exponential": lambda optimizer: lr_scheduler.ExponentialLR(
            optimizer, gamma=exponential["decay_rate"] ** (1 / exponential["decay_steps"])),
        "natural exponential": lambda optimizer: lr_scheduler.ExponentialLR(
            optimizer, gamma=math.exp(-natural["decay_rate"] / natural["decay_steps"])),
        "plateau": lambda optimizer: lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=plateau["factor"], patience=plateau["patience"], threshold=plateau["threshold"],
            threshold_mode="abs"),
        "warm-up + exponential": warmup_then_decay,
        "piecewise linear": lambda optimizer: optim.PiecewiseLinearLR(optimizer, knobs["piecewise"]),
    }


class Problem(NamedTuple):
    """One noisy linear regression per replicate (the rows)."""

    weights: torch.Tensor  # w*, (replicates, dimension)
    validation_inputs: torch.Tensor  # (replicates, VALIDATION, dimension)
    validation_targets: torch.Tensor  # (replicates, VALIDATION)
    noise: float
    seed: int


def make_problem(replicates: int, dimension: int, noise: float, seed: int = 0) -> Problem:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(replicates, dimension, generator=generator)
    inputs = torch.randn(replicates, VALIDATION, dimension, generator=generator)
    targets = torch.einsum("rnd,rd->rn", inputs, weights)
    targets += noise * torch.randn(replicates, VALIDATION, generator=generator)
    return Problem(weights, inputs, targets, noise, seed)


def train(problem: Problem, make_scheduler, per_replicate: bool, steps: int, lr: float, batch: int) -> dict:
    """Adam from w = 0 on every replicate at once; the minibatches depend on the problem's seed only.

    Adam is element-wise, so the replicates can share one (replicates, dimension) tensor and one
    scheduler, unless the lr must follow each replicate's own validation loss (``per_replicate``:
    then each replicate has its own optimizer and scheduler).
    Returns the lr each replicate's step t used, (steps, replicates); the excess risk ‖w − w*‖²
    before the first step and after each, (steps + 1, replicates); the validation losses fed to the
    scheduler every EPOCH steps, (epochs, replicates).
    """
    replicates, dimension = problem.weights.shape
    shapes = [(1, dimension)] * replicates if per_replicate else [(replicates, dimension)]
    params = [torch.zeros(shape, requires_grad=True) for shape in shapes]
    optimizers = [optim.Adam([param], lr=lr, impl="reference") for param in params]
    scheduled = [make_scheduler(optimizer) for optimizer in optimizers]
    rows = [param.shape[0] for param in params]
    generator = torch.Generator().manual_seed(problem.seed + 1)
    lrs, excess, validation = [], [problem.weights.pow(2).sum(dim=1)], []
    for step in range(steps):
        weights = torch.cat([param.detach() for param in params])
        inputs = torch.randn(replicates, batch, dimension, generator=generator)
        targets = torch.einsum("rbd,rd->rb", inputs, problem.weights)
        targets += problem.noise * torch.randn(replicates, batch, generator=generator)
        residuals = torch.einsum("rbd,rd->rb", inputs, weights) - targets
        gradient = 2 / batch * torch.einsum("rbd,rb->rd", inputs, residuals)  # of the minibatch's mean squared error
        for param, grad in zip(params, gradient.split(rows)):
            param.grad = grad.clone()
        lrs.append(torch.tensor([optimizer.param_groups[0]["lr"] for optimizer, n in zip(optimizers, rows)
                                 for _ in range(n)], dtype=torch.float64))
        for optimizer in optimizers:
            optimizer.step()
        weights = torch.cat([param.detach() for param in params])
        excess.append((weights - problem.weights).pow(2).sum(dim=1))
        end_of_epoch = (step + 1) % EPOCH == 0
        if end_of_epoch:
            predictions = torch.einsum("rnd,rd->rn", problem.validation_inputs, weights)
            validation.append((predictions - problem.validation_targets).pow(2).mean(dim=1))
        for replicate, scheduler in enumerate(scheduled):
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                if end_of_epoch:  # per_replicate: scheduler i follows replicate i
                    scheduler.step(validation[-1][replicate].item())
            elif scheduler is not None:
                scheduler.step()
    return dict(lr=torch.stack(lrs), excess=torch.stack(excess),
                validation=torch.stack(validation) if validation else torch.empty(0, replicates))


def draw(runs: dict, steps: int, lr: float):
    figure, (lr_axes, loss_axes) = pyplot.subplots(1, 2, figsize=(13, 4.8))
    for name, numbers in runs.items():
        line, = lr_axes.plot(numbers["lr"][:, 0], label=name)
        if numbers["lr"].shape[1] > 1 and not torch.equal(numbers["lr"][:, 0], numbers["lr"][:, -1]):
            lr_axes.plot(numbers["lr"][:, 1:], color=line.get_color(), alpha=0.35, linewidth=0.8)
        mean = numbers["excess"].mean(dim=1)
        loss_axes.plot(mean, color=line.get_color(), label=name)
    lr_axes.set(yscale="log", xlabel="step", ylabel="lr (each replicate's, where they differ)",
                title=f"schedules from torch.optim.lr_scheduler, η0 = {lr:g}")
    loss_axes.set(yscale="log", xlabel="step", ylabel="‖w − w*‖² (test loss − σ²), mean over replicates",
                  title=f"Adam on noisy linear regression, {steps} steps")
    lr_axes.legend(fontsize=8)
    loss_axes.legend(fontsize=8)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def run(out=None, steps: int = 1000, replicates: int = 5, lr: float = 0.1, dimension: int = 20,
        batch: int = 16, noise: float = 1.0) -> dict:
    problem = make_problem(replicates, dimension, noise)
    with common.one_thread():
        runs = {name: train(problem, make, name == "plateau", steps, lr, batch)
                for name, make in schedulers(steps).items()}
    for numbers in runs.values():
        final = numbers["excess"][-1]
        numbers.update(final=final, mean=final.mean().item(), spread=final.std().item())
    figure = draw(runs, steps, lr)
    rows = [dict(schedule=name, steps=steps, lr=lr, replicate=replicate, final_excess_risk=value,
                 final_lr=numbers["lr"][-1, replicate].item())
            for name, numbers in runs.items() for replicate, value in enumerate(numbers["final"].tolist())]
    common.save(NAME, figure, rows, out)
    constant = runs["constant"]["mean"]
    print(f"final ‖w − w*‖² after {steps} steps, η0 = {lr:g}, {replicates} replicates")
    print(f"{'schedule':24} {'mean':>9} {'± std':>9} {'min':>9} {'max':>9} {'constant/mean':>14}")
    for name, numbers in runs.items():
        final = numbers["final"]
        print(f"{name:24} {numbers['mean']:9.4f} {numbers['spread']:9.4f} {final.min().item():9.4f} "
              f"{final.max().item():9.4f} {constant / numbers['mean']:14.1f}")
    return dict(runs=runs, settings=settings(steps), steps=steps, lr=lr)


if __name__ == "__main__":
    common.main(sys.modules[__name__])
