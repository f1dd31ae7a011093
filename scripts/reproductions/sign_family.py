r"""The sign family are one rule with different knobs, and Adam's L2 decay is not a decay.

Seed 004_21bcd73060106028.txt (sections 5.1 and 6.1) says that Signum is Lion with β1 = β2 (and
λ = 0), that Tiger is Lion with β1 = β2 = β, and that Tiger over SignSGD only adds momentum and weight
decay; seed 003_222e89654191eb88.txt cites Loshchilov & Hutter on decoupled weight decay. With the
rules of /work/shared/RULES.md (η the lr, λ the decay, m the momentum):

.. math::
    \text{Lion: } θ ← θ(1 − ηλ) − η\,\mathrm{sign}(c), \quad c = β_1 m + (1 − β_1) g, \quad
    m ← β_2 m + (1 − β_2) g
    \text{Signum: } m ← β m + (1 − β) g, \quad θ ← θ(1 − ηλ) − η\,\mathrm{sign}(m)
    \text{Tiger } (k = 1)\text{: } m ← β m + (1 − β) g, \quad θ ← θ − η'(\mathrm{sign}(m) + λ' θ)
    \text{SignSGD: } θ ← θ(1 − ηλ) − η\,\mathrm{sign}(g)

With β1 = β2 = β Lion's c is the new m, so Lion is Signum. With β1 = 0, c = g: Lion is SignSGD,
whatever β2 (m is then never read).

Tiger "without per-tensor rules" is a choice of its param_kind (``kernels.tiger.PARAM_KINDS``): a
matrix takes η' = η·RMS(θ), an embedding η·RMS(θ) per row, and only the bias (and normalization)
kinds take a constant η' = η/2, with λ' = 0. So Tiger with param_kind="bias" and lr = 2η is Lion
(η, β1 = β2 = β, λ = 0) and Signum (η, β, λ = 0). Every Tiger kind that decays also scales by RMS(θ):
its decoupled decay θ − η'(sign m + λθ) = θ(1 − η'λ) − η' sign m is shown against Lion whose lr is set
to η·RMS(θ) of each tensor before each step.

Exactness. Within one impl the equal pairs compute the same fp32 operations in the same order (2η·½
is η exactly; 0·θ adds nothing; Lion with λ = 0 multiplies θ by 1), and the model makes the same
gradients from the same θ, so the trajectories are bitwise equal. The Tiger-matrix pair rounds
differently (Tiger subtracts η'(sign m + λθ), Lion multiplies θ by fp32(1 − η'λ)), so it agrees only
to fp32 rounding, and only on gradients that do not depend on θ (random ones): on the model's, the
1-ulp differences change g, and where m is near zero its sign flips and moves θ by 2η' (in a 200-step
run on the model that happened near step 150, after 1e-7 differences until then).

AdamW against Adam + L2 on a parameter whose data gradient is zero: AdamW decays θ_t = (1 − ηλ)^t θ0.
Adam's gradient is the L2 term λθ alone, and Adam divides it by its own RMS: m̂/√v̂ does not depend on
λ at all, so θ falls by about η per step at first and more slowly as θ shrinks (v̂ remembers the
larger gradients of the last 1/(1 − β2) = 1000 steps), whatever λ is.
"""
import sys
from typing import Callable, NamedTuple, Optional

import torch
from matplotlib import pyplot
from torch.nn import functional

from fusedoptim import optim
from scripts.reproductions import common

NAME = "sign_family"
CLAIM = ("Tiger (bias kind, lr 2η) = Lion (β1 = β2) = Signum, bitwise; Lion (β1 = 0) = SignSGD; AdamW decays "
         "θ by (1 − ηλ)^t while Adam's L2 falls by about η per step whatever λ is")

BATCH = 32  # minibatches: noisy gradients, so the momentum matters and changes sign


def make_model(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():  # nn.Linear draws its init from the global generator: leave it as it was
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def make_data(seed: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(256, 8, generator=generator)
    targets = torch.sin(inputs @ torch.randn(8, 1, generator=generator))
    return inputs, targets + 0.1 * torch.randn(256, 1, generator=generator)


class Side(NamedTuple):
    make_optimizer: Callable  # params -> optimizer
    before_step: Optional[Callable] = None  # optimizer -> None, run before each step


class Pair(NamedTuple):
    left: Side
    right: Side
    expected: str  # "bitwise", "fp32" (equal to rounding) or "differs" (a control)
    gradients: str = "model"  # "model": the small MLP's minibatch gradients; "random": fixed noise


def trajectory(side: Side, steps: int, gradients: str = "model", seed: int = 0) -> torch.Tensor:
    """Every param of the small model, flattened, at each step: (steps + 1, number of params).

    The model, the data, the minibatch order and the random gradients depend on ``seed`` only, so two
    optimizers see the same gradients for as long as their params agree ("random" gradients do not
    depend on the params at all).
    """
    model = make_model(seed)
    inputs, targets = make_data(seed)
    optimizer = side.make_optimizer(list(model.parameters()))
    generator = torch.Generator().manual_seed(seed)
    path = [torch.cat([p.detach().flatten() for p in model.parameters()])]
    for _ in range(steps):
        optimizer.zero_grad()
        if gradients == "random":
            for param in model.parameters():
                param.grad = torch.randn(param.shape, generator=generator)
        else:
            rows = torch.randint(len(inputs), (BATCH,), generator=generator)
            functional.mse_loss(model(inputs[rows]), targets[rows]).backward()
        if side.before_step is not None:
            side.before_step(optimizer)
        optimizer.step()
        path.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return torch.stack(path)


def lion_with_tiger_matrix_lr(lr: float, beta: float, weight_decay: float, impl: str) -> Side:
    """Lion with one group per tensor, whose lr is set to lr·RMS(θ) before each step, as a Tiger matrix's."""
    def make(params):
        return optim.Lion([dict(params=[p]) for p in params], lr=lr, betas=(beta, beta),
                          weight_decay=weight_decay, impl=impl)

    def before_step(optimizer):
        for group in optimizer.param_groups:
            theta = group["params"][0].detach().float()
            group["lr"] = lr * theta.pow(2).mean().sqrt().item()  # Tiger's RMS(θ), before the step
    return Side(make, before_step)


def pairs(lr: float, beta: float, weight_decay: float, impl: str) -> dict:
    """The pairs to compare, by name (the Tiger-matrix pair on random gradients: see the module docstring)."""
    lion = Side(lambda p: optim.Lion(p, lr=lr, betas=(beta, beta), weight_decay=0.0, impl=impl))
    lion_decay = Side(lambda p: optim.Lion(p, lr=lr, betas=(beta, beta), weight_decay=weight_decay, impl=impl))
    return {
        "Tiger(bias, lr 2η) vs Lion(β1=β2)": Pair(
            Side(lambda p: optim.Tiger([dict(params=p, param_kind="bias")], lr=2 * lr, beta=beta,
                                       weight_decay=0.0, impl=impl)), lion, "bitwise"),
        "Signum vs Lion(β1=β2)": Pair(
            Side(lambda p: optim.Signum(p, lr=lr, momentum=beta, weight_decay=0.0, impl=impl)), lion, "bitwise"),
        "Signum vs Lion(β1=β2), decay λ": Pair(
            Side(lambda p: optim.Signum(p, lr=lr, momentum=beta, weight_decay=weight_decay, impl=impl)),
            lion_decay, "bitwise"),
        "Lion(β1=0) vs SignSGD, decay λ": Pair(
            Side(lambda p: optim.Lion(p, lr=lr, betas=(0.0, 0.99), weight_decay=weight_decay, impl=impl)),
            Side(lambda p: optim.SignSGD(p, lr=lr, weight_decay=weight_decay, impl=impl)), "bitwise"),
        "Tiger(matrix) vs Lion(lr·RMS(θ)), decay λ": Pair(
            Side(lambda p: optim.Tiger([dict(params=p, param_kind="matrix")], lr=lr, beta=beta,
                                       weight_decay=weight_decay, impl=impl)),
            lion_with_tiger_matrix_lr(lr, beta, weight_decay, impl), "fp32", gradients="random"),
        "control: Lion(0.9, 0.99) vs Signum(0.9)": Pair(
            Side(lambda p: optim.Lion(p, lr=lr, betas=(0.9, 0.99), impl=impl)),
            Side(lambda p: optim.Signum(p, lr=lr, momentum=0.9, impl=impl)), "differs"),
    }


def pair_differences(steps: int = 200, lr: float = 1e-2, beta: float = 0.9, weight_decay: float = 0.1,
                     impl: str = "reference") -> dict:
    """name -> (max |θ_left − θ_right| over the params at each step, expected, max |θ| over the run)."""
    differences = {}
    for name, pair in pairs(lr, beta, weight_decay, impl).items():
        left = trajectory(pair.left, steps, pair.gradients)
        right = trajectory(pair.right, steps, pair.gradients)
        differences[name] = ((left - right).abs().amax(dim=1), pair.expected, left.abs().max().item())
    return differences


def zero_gradient_decay(optimizer_class, steps: int, lr: float, weight_decay: float) -> torch.Tensor:
    """θ at each step of one parameter θ0 = 1 whose data gradient is zero: only the decay moves it."""
    theta = torch.ones(1, requires_grad=True)
    optimizer = optimizer_class([theta], lr=lr, weight_decay=weight_decay, impl="reference")
    path = [1.0]
    for _ in range(steps):
        theta.grad = torch.zeros_like(theta)
        optimizer.step()
        path.append(theta.item())
    return torch.tensor(path, dtype=torch.float64)


def draw(differences: dict, decay_paths: dict, title_pairs: str, title_decay: str):
    figure, (decay_axes, pair_axes) = pyplot.subplots(1, 2, figsize=(13, 4.8))
    for (label, path), style in zip(decay_paths.items(), ("-", "k:", "-", "--")):
        decay_axes.plot(path, style, label=label)
    decay_axes.set(xlabel="step", ylabel="θ", title=title_decay)
    decay_axes.legend(fontsize=8)
    for name, (gap, expected, _) in differences.items():
        pair_axes.plot(gap, label=f"{name} ({expected})")
    pair_axes.set_yscale("symlog", linthresh=1e-9)  # bitwise-equal pairs sit at exactly 0
    exact = sum(gap.max().item() == 0 for gap, _, _ in differences.values())
    pair_axes.text(0.02, 0.03, f"{exact} pairs are exactly 0 at every step (their lines overlap)",
                   transform=pair_axes.transAxes, fontsize=8)
    pair_axes.set(xlabel="step", ylabel="max |θ_a − θ_b|", title=title_pairs)
    pair_axes.legend(fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def run(out=None, steps: int = 200, adam_steps: int = 1000, lr: float = 1e-2, beta: float = 0.9,
        weight_decay: float = 0.1, adam_lr: float = 1e-3, impl: str = "reference") -> dict:
    weak_decay = weight_decay / 100  # Adam's L2 path should not depend on λ
    with common.one_thread():
        differences = pair_differences(steps, lr, beta, weight_decay, impl)
        decay_paths = {
            f"AdamW, λ = {weight_decay:g}": zero_gradient_decay(optim.AdamW, adam_steps, adam_lr, weight_decay),
            "(1 − ηλ)^t": (1 - adam_lr * weight_decay) ** torch.arange(adam_steps + 1, dtype=torch.float64),
            f"Adam + L2, λ = {weight_decay:g}": zero_gradient_decay(optim.Adam, adam_steps, adam_lr, weight_decay),
            f"Adam + L2, λ = {weak_decay:g}": zero_gradient_decay(optim.Adam, adam_steps, adam_lr, weak_decay),
        }
    adamw, closed_form, adam_l2, adam_l2_weak = (path[-1].item() for path in decay_paths.values())
    # θ·(1 − ηλ) multiplies by the factor rounded to fp32
    fp32_factor = torch.tensor(1 - adam_lr * weight_decay, dtype=torch.float32).double()
    results = dict(
        pairs={name: dict(expected=expected, max_difference=gap.max().item(), max_theta=max_theta)
               for name, (gap, expected, max_theta) in differences.items()},
        adamw=adamw, closed_form=closed_form, fp32_factor_closed_form=(fp32_factor ** adam_steps).item(),
        adam_l2=adam_l2, adam_l2_weak=adam_l2_weak)

    figure = draw(differences, decay_paths,
                  f"small MLP, {steps} steps, η = {lr:g}, β = {beta:g}, λ = {weight_decay:g}",
                  f"zero data gradient, θ0 = 1, η = {adam_lr:g}")
    rows = [dict(kind="pair", name=name, steps=steps, impl=impl, expected=row["expected"],
                 max_abs_difference=row["max_difference"]) for name, row in results["pairs"].items()]
    rows += [dict(kind="zero-gradient decay", name=name, steps=adam_steps, impl="reference",
                  theta_final=results[name])
             for name in ("adamw", "closed_form", "fp32_factor_closed_form", "adam_l2", "adam_l2_weak")]
    common.save(NAME, figure, rows, out)
    print(f"{'pair':46} {'expected':>8} {'max |Δθ|':>10}")
    for name, row in results["pairs"].items():
        print(f"{name:46} {row['expected']:>8} {row['max_difference']:10.3g}")
    print(f"θ after {adam_steps} steps, η = {adam_lr:g}, λ = {weight_decay:g}: AdamW {adamw:.6f} "
          f"((1 − ηλ)^t = {closed_form:.6f}; with 1 − ηλ rounded to fp32 "
          f"{results['fp32_factor_closed_form']:.6f}); "
          f"Adam + L2 {adam_l2:.6f} (λ = {weak_decay:g}: {adam_l2_weak:.6f})")
    return results


if __name__ == "__main__":
    common.main(sys.modules[__name__])
