r"""Exponentiated gradient keeps parameters non-negative and solves non-negative least squares.

Claim (issue 8, item 2; seed 000: 苏剑林, "指数梯度下降 + 元学习 = 自适应学习率",
https://spaces.ac.cn/archives/8968, after Kivinen & Warmuth 1997): the multiplicative update

.. math:: θ_{t+1} = θ_t \odot \exp(−η \nabla L(θ_t))

keeps θ ≥ 0 whenever θ_0 ≥ 0 (it is gradient descent on φ = log θ with the factor e^φ dropped from
the gradient), so it solves min_{x ≥ 0} L(x) = ‖Ax − b‖² without a projection. At a solution x* the KKT
conditions read ∇L(x*)_i = 0 where x*_i > 0 and μ_i = ∇L(x*)_i ≥ 0 where x*_i = 0; there EG's update
is x_i ← x_i e^{−η μ_i}: the active coordinates decay geometrically towards 0 and never cross it.

The problem: A (20 × 8, entries N(0, 1/20)) and b = A x_true + noise with x_true ~ N(0, 1); half of
x_true is negative, so the unconstrained least-squares answer is infeasible and the constraint is active.
optim.EG runs from x_0 = 1; scipy.optimize.nnls (Lawson & Hanson's active-set method, in fp64) gives
the answer it is judged against. Gradient descent (optim.SGD) at the same lr, from the same start, is
the contrast: it heads for the unconstrained answer and leaves the feasible set.
"""
import sys

import torch
from matplotlib import pyplot
from scipy.optimize import nnls

from fusedoptim import optim
from scripts.reproductions import common

NAME = "exponentiated_gradient"
CLAIM = "EG from a positive start stays ≥ 0 at every step and reaches scipy.optimize.nnls's answer"


def problem(rows=20, columns=8, noise=0.1, seed=0):
    """A random least-squares problem whose unconstrained answer has negative coordinates (fp32)."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(rows, columns, generator=generator) / rows**0.5  # columns of norm about 1
    x_true = torch.randn(columns, generator=generator)
    target = matrix @ x_true + noise * torch.randn(rows, generator=generator)
    return matrix, target


def objective(matrix, target, x) -> float:
    """‖Ax − b‖² in fp64: the gap to the optimum falls far below fp32's resolution of L itself."""
    return float(((matrix.double() @ x.double() - target.double()) ** 2).sum())


def gradient(matrix, target, x) -> torch.Tensor:
    return 2 * matrix.T @ (matrix @ x - target)


def descend(optimizer_class, matrix, target, steps, lr, impl="reference") -> dict:
    """``steps`` steps from x_0 = 1: every iterate (steps + 1 rows) and the objective at each."""
    x = torch.nn.Parameter(torch.ones(matrix.shape[1]))
    optimizer = optimizer_class([x], lr=lr, impl=impl)
    iterates = [x.detach().clone()]
    for _ in range(steps):
        x.grad = gradient(matrix, target, x.detach())
        optimizer.step()
        iterates.append(x.detach().clone())
    iterates = torch.stack(iterates)
    return dict(iterates=iterates, objectives=[objective(matrix, target, x) for x in iterates])


def decay_rate(path: torch.Tensor, lr: float, floor=1e-30) -> float:
    """−log(x_{t+1} / x_t) / η of one coordinate, averaged over the 200 steps before it falls below
    ``floor`` (fp32's subnormals begin near 1e-38): EG predicts the KKT multiplier μ_i."""
    steps = torch.nonzero(path > floor).flatten()
    last, first = int(steps[-1]), max(int(steps[-1]) - 200, 0)
    return float(torch.log(path[first].double() / path[last].double()) / ((last - first) * lr))


def run(out=None, steps=1000, lr=0.1, seed=0, impl="reference") -> dict:
    """EG and SGD at ``lr`` on the NNLS problem; the reference by default (2 × 1000 steps under the Triton
    interpreter would take over a minute; the test checks the kernel agrees on a short stretch)."""
    matrix, target = problem(seed=seed)
    answer, residual_norm = nnls(matrix.double().numpy(), target.double().numpy())
    answer = torch.from_numpy(answer)
    solution = dict(answer=answer, best=residual_norm**2, active=answer == 0,
                    multipliers=gradient(matrix.double(), target.double(), answer))  # μ_i = ∇L(x*)_i
    exponentiated = descend(optim.EG, matrix, target, steps, lr, impl)
    plain = descend(optim.SGD, matrix, target, steps, lr, impl)
    results = summarise(solution, exponentiated, plain, lr)
    figure = draw(solution, exponentiated, plain, lr, tuple(matrix.shape))
    common.save(NAME, figure, csv_rows(solution, exponentiated, plain, results), out)
    print_table(solution, results, steps)
    return results


def summarise(solution, exponentiated, plain, lr) -> dict:
    answer, best, active = solution["answer"], solution["best"], solution["active"]
    steps = len(exponentiated["objectives"]) - 1
    gaps = [value - best for value in exponentiated["objectives"]]
    final = exponentiated["iterates"][-1].double()
    rates = [decay_rate(exponentiated["iterates"][:, i], lr) if active[i] else float("nan")
             for i in range(len(answer))]
    return dict(
        active_coordinates=int(active.sum()), free_coordinates=int((~active).sum()),
        eg_min_iterate=float(exponentiated["iterates"].min()), sgd_min_iterate=float(plain["iterates"].min()),
        relative_gap=gaps[-1] / best, relative_gap_at_tenth=gaps[steps // 10] / best,
        max_x_error=float((final - answer).abs().max()), answer=answer, eg_final=final,
        multipliers=solution["multipliers"], decay_rates=torch.tensor(rates, dtype=torch.float64))


def draw(solution, exponentiated, plain, lr, shape):
    """The objective gap, every coordinate's path, and the smallest coordinate against gradient descent's."""
    answer, active, multipliers = solution["answer"], solution["active"], solution["multipliers"]
    steps = range(len(exponentiated["objectives"]))
    figure, (gap_axes, path_axes, sign_axes) = pyplot.subplots(1, 3, figsize=(15, 4))
    gap_axes.semilogy(steps, [value - solution["best"] for value in exponentiated["objectives"]])
    gap_axes.set(xlabel="step", ylabel="EG's L(x) − L*  (L* from scipy.optimize.nnls)",
                 title=f"‖Ax − b‖², A {shape}, lr = {lr:g}")
    for i in range(len(answer)):
        label = f"x{i}: x* = {answer[i]:.3f}" + (f", μ = {multipliers[i]:.2f}" if active[i] else "")
        path_axes.semilogy(steps, exponentiated["iterates"][:, i], "--" if active[i] else "-", color=f"C{i}",
                           label=label)
    path_axes.set(xlabel="step", ylabel="EG's x_i (log scale; dashed: x*_i = 0)", ylim=(1e-46, 10),
                  title="where x*_i = 0: x_i ∝ exp(−η μ_i t), to fp32's subnormals")
    path_axes.legend(fontsize=7, ncol=2, loc="center right")
    sign_axes.plot(steps, exponentiated["iterates"].min(dim=1).values, label="EG")
    sign_axes.plot(steps, plain["iterates"].min(dim=1).values, label="gradient descent, same lr")
    sign_axes.axhline(0, color="grey", linewidth=0.8)
    sign_axes.set(xscale="symlog", xlim=(0, steps[-1]), xlabel="step", ylabel="smallest coordinate of x",
                  title="feasibility x ≥ 0")
    sign_axes.legend()
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def csv_rows(solution, exponentiated, plain, results) -> list:
    """One row per coordinate (the answers, μ, EG's decay rate), then one every 10 steps."""
    rows = [dict(kind="coordinate", coordinate=i, nnls_x=float(x), eg_x=float(results["eg_final"][i]),
                 multiplier=float(solution["multipliers"][i]), eg_decay_rate=float(results["decay_rates"][i]))
            for i, x in enumerate(solution["answer"])]
    rows += [dict(kind="step", step=step, eg_objective_gap=exponentiated["objectives"][step] - solution["best"],
                  eg_min_coordinate=float(exponentiated["iterates"][step].min()),
                  sgd_objective_gap=plain["objectives"][step] - solution["best"],
                  sgd_min_coordinate=float(plain["iterates"][step].min()))
             for step in range(0, len(exponentiated["objectives"]), 10)]
    return rows


def print_table(solution, results, steps):
    print(f"{'i':>2} | {'nnls x*':>9} | {'EG x':>11} | {'μ = ∇L(x*)':>10} | {'EG decay rate':>13}")
    for i, x in enumerate(solution["answer"]):
        print(f"{i:>2} | {x:>9.6f} | {results['eg_final'][i]:>11.4e} | {solution['multipliers'][i]:>10.4f} | "
              f"{results['decay_rates'][i]:>13.4f}")
    print(f"L* = {solution['best']:.6e}; EG's relative gap {results['relative_gap']:.2e} after {steps} steps "
          f"({results['relative_gap_at_tenth']:.2e} after {steps // 10}); max |x − x*| {results['max_x_error']:.2e}")
    print(f"smallest coordinate over all steps: EG {results['eg_min_iterate']:.3e}, "
          f"gradient descent {results['sgd_min_iterate']:.3e}")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
