r"""fo.LBFGS against gradient descent (fo.SGD) on the seeds' convex problems: superlinear against linear.

Issue 26, item 6. Seed 004 (section 2.2) says the quasi-Newton methods, L-BFGS among them, build from
gradient differences a model of the Hessian "足以产生超线性收敛性" (enough for superlinear convergence),
"大大优于最速下降法" (far better than steepest descent), needing only gradients. classical_methods
measures that with hand-written methods; this measures it with the optimizers a user calls:
fo.LBFGS (torch.optim.LBFGS's twin, docs/lbfgs.md) and fo.SGD as gradient descent, both through
``step(closure)``, and torch.optim.LBFGS beside ours to check that they take the same steps.

Problems, fp64 (fo.LBFGS and fo.SGD run their reference, torch's own ops, on fp64 params):
  - logistic regression: classical_methods' problem (500 samples, d = 10, λ = 1e-2, L2-regularised:
    strongly convex), θ* its certified optimum (classical_methods.reference_optimum);
  - least squares: f(θ) = ‖Aθ − b‖²/(2n), n = 200, d = 20, the Hessian AᵀA/n with eigenvalues spread
    log-evenly over [1e-2, 1] (κ = 100), b = Aθ_true + noise; θ* by torch.linalg.lstsq.

Methods, each from θ = 0: gradient descent θ ← θ − g/L (L ≥ λ_max(∇²f): classical_methods'
bound for the logistic loss, λ_max(AᵀA/n) for least squares); L-BFGS with torch's defaults (lr 1,
history_size 100 > d) with the fixed step t = lr, and with line_search_fn="strong_wolfe".

Counting: the optimizers step with max_iter=1 per ``step(closure)`` call, so that every iterate θ_k
is seen; the iterates are those of one long ``step`` (its state carries over; checked: one step with
max_iter=K ends on θ_K with the counted evaluations). The evaluations reported for θ_k are those
one long step makes before reaching it: the closure at θ_0, … θ_{k−1} without a line search (and
for GD), 1 + the line search's evaluations of the first k iterations with it (the per-step protocol
evaluates each accepted point once more, at its next call: not counted). Tolerances: the
iterations stop at max|∇f| ≤ 1e-12 (tolerance_grad; tolerance_change = 0, so that no other test
stops them early), ‖θ − θ*‖ ≤ 1e-12/λ_min.

Rates, as classical_methods measures them (its functions): e_k = ‖θ_k − θ*‖; the order p of
e_{k+1} ≈ C e_k^p fitted over the asymptotic pairs, the tail ratio e_{k+1}/e_k (→ 0 superlinear), and
for GD its linear rate r against the predicted spectral radius of 1 − H*/L.

What came out is not the seed's superlinear convergence: torch's L-BFGS (and so ours) keeps a pair
(s, y) only while yᵀs > 1e-10, an absolute threshold, so once the steps are small (‖s‖ ~ 1e-5 on the
logistic problem, where its history stops at 15 pairs) it steps with a frozen inverse-Hessian
estimate and contracts at a fixed ratio (0.56 to 0.91), fitted orders 0.96 to 0.98. With the strong
Wolfe search on least squares, the search returns t = 0 at ‖θ − θ*‖ = 5.8e-5 (torch's as ours) and
the run stops there.
"""
import math
import sys
from dataclasses import dataclass

import torch

from fusedoptim import optim
from scripts.reproductions import classical_methods, common

NAME = "lbfgs_convex"
CLAIM = ("fo.LBFGS takes torch.optim.LBFGS's steps exactly and reaches the optimum of logistic regression and least "
         "squares in 18-35x fewer closure evaluations than gradient descent: fast, but linear here")

TOLERANCE = 1e-6  # ‖θ − θ*‖ that "evaluations to reach" counts to: above where the L-BFGS runs stall (3e-8, 6e-5)
GRADIENT_TOLERANCE = 1e-12  # max|∇f| at which the L-BFGS iterations stop, as classical_methods' methods
LBFGS_ITERATIONS = 100  # at most; they stop at GRADIENT_TOLERANCE within 40 here
GD_ITERATIONS = {"logistic regression": 1500, "least squares": 3000}  # to past TOLERANCE at rates 0.99
LINE_SEARCHES = {"L-BFGS": None, "L-BFGS, strong Wolfe": "strong_wolfe"}


@dataclass(frozen=True)
class LeastSquares:
    matrix: torch.Tensor  # n × d, fp64
    targets: torch.Tensor  # n

    def loss(self, theta):
        residual = self.matrix @ theta - self.targets
        return residual @ residual / (2 * len(self.targets))

    def gradient(self, theta):
        return self.matrix.T @ (self.matrix @ theta - self.targets) / len(self.targets)

    def hessian(self, theta=None):
        return self.matrix.T @ self.matrix / len(self.targets)

    def smoothness(self) -> float:
        return torch.linalg.eigvalsh(self.hessian())[-1].item()

    def optimum(self):
        return torch.linalg.lstsq(self.matrix, self.targets.unsqueeze(-1)).solution.squeeze(-1)


def make_least_squares(samples=200, features=20, condition=100.0, scale=100.0, seed=0) -> LeastSquares:
    """A = U·diag(√(n·h))·Vᵀ with U, V random orthonormal and h log-spaced in [scale/κ, scale]: AᵀA/n = V·diag(h)·Vᵀ."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(samples, features, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(features, features, generator=generator, dtype=torch.float64))
    eigenvalues = scale * torch.logspace(-math.log10(condition), 0, features, dtype=torch.float64)
    matrix = left @ torch.diag((samples * eigenvalues).sqrt()) @ right.T
    truth = torch.randn(features, generator=generator, dtype=torch.float64)
    noise = 0.1 * torch.randn(samples, generator=generator, dtype=torch.float64)
    return LeastSquares(matrix, matrix @ truth + noise)


def problems() -> dict:
    """name -> (problem, θ*, λ_min(∇²f(θ*)))."""
    logistic = classical_methods.make_problem()
    least_squares = make_least_squares()
    made = {"logistic regression": (logistic, classical_methods.reference_optimum(logistic)),
            "least squares": (least_squares, least_squares.optimum())}
    return {name: (problem, theta_star, torch.linalg.eigvalsh(problem.hessian(theta_star))[0].item())
            for name, (problem, theta_star) in made.items()}


class Counted:
    """The closure of ``problem`` for the one fp64 param ``theta``: the hand gradient (classical_methods
    checks it against autograd) into theta.grad, the loss returned; ``evaluations`` counts the calls."""

    def __init__(self, problem, theta):
        self.problem, self.theta, self.evaluations = problem, theta, 0

    def __call__(self):
        self.evaluations += 1
        point = self.theta.detach()
        self.theta.grad = self.problem.gradient(point)
        return self.problem.loss(point)


def lbfgs_iterates(problem, optimizer_class, line_search_fn, iterations=LBFGS_ITERATIONS):
    """(θ_0, θ_1, …) and the evaluations a single long step makes before reaching each, of
    ``optimizer_class`` (fo.LBFGS or torch.optim.LBFGS) stepped with max_iter=1 until it stops moving."""
    theta = torch.zeros(dimension(problem), dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([theta], max_iter=1, tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=0,
                                line_search_fn=line_search_fn)
    closure = Counted(problem, theta)
    iterates, evaluations = [theta.detach().clone()], [0]
    for k in range(1, iterations + 1):
        optimizer.step(closure)
        if torch.equal(theta.detach(), iterates[-1]):
            break  # max|∇f| ≤ tolerance_grad: the step returned before moving
        iterates.append(theta.detach().clone())
        # With a line search the per-step calls re-evaluate θ_{k−1} at their start; one long step does not.
        evaluations.append(closure.evaluations - (k - 1 if line_search_fn else 0))
    return iterates, evaluations


def long_step(problem, optimizer_class, line_search_fn, iterations) -> tuple:
    """θ after one ``step(closure)`` with max_iter = ``iterations``, and the closure's evaluations."""
    theta = torch.zeros(dimension(problem), dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([theta], max_iter=iterations, max_eval=10 * iterations,
                                tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=0, line_search_fn=line_search_fn)
    closure = Counted(problem, theta)
    optimizer.step(closure)
    return theta.detach().clone(), closure.evaluations


def dimension(problem) -> int:
    return (problem.matrix if isinstance(problem, LeastSquares) else problem.features).shape[1]


def gradient_descent(problem, iterations):
    """fo.SGD at lr 1/L through step(closure), fp64: the iterates; one evaluation per iteration."""
    theta = torch.zeros(dimension(problem), dtype=torch.float64, requires_grad=True)
    optimizer = optim.SGD([theta], lr=1 / problem.smoothness(), impl="reference")  # fp64: the reference
    closure = Counted(problem, theta)
    iterates = [theta.detach().clone()]
    for _ in range(iterations):
        optimizer.step(closure)
        iterates.append(theta.detach().clone())
    return iterates, list(range(iterations + 1))


def evaluations_to_reach(errors, evaluations, tolerance=TOLERANCE):
    return next((count for error, count in zip(errors, evaluations) if error <= tolerance), None)


def measure(problem, theta_star) -> dict:
    """Each method's errors, evaluations and rates on ``problem``, and the checks against torch."""
    methods = {"gradient descent": gradient_descent(problem, GD_ITERATIONS[problem_name(problem)])}
    checks = {}
    for name, line_search_fn in LINE_SEARCHES.items():
        ours = methods[name] = lbfgs_iterates(problem, optim.LBFGS, line_search_fn)
        theirs = lbfgs_iterates(problem, torch.optim.LBFGS, line_search_fn)
        long_theta, long_evaluations = long_step(problem, optim.LBFGS, line_search_fn, len(ours[0]) - 1)
        checks[name] = dict(
            equals_torch=len(ours[0]) == len(theirs[0]) and all(map(torch.equal, ours[0], theirs[0]))
            and ours[1] == theirs[1],
            long_step_equal=torch.equal(long_theta, ours[0][-1]) and long_evaluations == ours[1][-1])
    summary = {}
    for name, (iterates, evaluations) in methods.items():
        errors = [(theta - theta_star).norm().item() for theta in iterates]
        row = dict(iterations=len(iterates) - 1, evaluations=evaluations[-1], final_error=errors[-1],
                   final_gradient=problem.gradient(iterates[-1]).norm().item(),
                   order=classical_methods.convergence_order(errors), tail_ratio=classical_methods.tail_ratio(errors),
                   evaluations_to_tolerance=evaluations_to_reach(errors, evaluations),
                   iterations_to_tolerance=evaluations_to_reach(errors, range(len(errors))), **checks.get(name, {}))
        if name == "gradient descent":
            row.update(rate=classical_methods.linear_rate(errors),
                       predicted_rate=classical_methods.predicted_rate(problem.hessian(theta_star),
                                                                       1 / problem.smoothness()))
        summary[name] = dict(row, errors=errors, evaluation_counts=evaluations)
    return summary


def problem_name(problem) -> str:
    return "least squares" if isinstance(problem, LeastSquares) else "logistic regression"


def run(out=None) -> dict:
    with common.one_thread():
        made = problems()
        results = {name: measure(problem, theta_star) for name, (problem, theta_star, _) in made.items()}
    rows = [dict(kind="summary", problem=problem, method=method,
                 **{key: value for key, value in row.items() if key not in ("errors", "evaluation_counts")})
            for problem, summary in results.items() for method, row in summary.items()]
    # Every iterate of L-BFGS, GD's first 50 and then every 10th: the CSV stays small.
    rows += [dict(kind="error", problem=problem, method=method, iteration=k, evaluations=count, error=error)
             for problem, summary in results.items() for method, row in summary.items()
             for k, (error, count) in enumerate(zip(row["errors"], row["evaluation_counts"]))
             if method != "gradient descent" or k <= 50 or k % 10 == 0]
    common.save(NAME, draw(results), rows, out)
    print_table(results, made)
    return dict(results=results, problems=made)


def draw(results):
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(2, 2, figsize=(12, 8))
    for row_axes, (problem, summary) in zip(axes, results.items()):
        for method, row in summary.items():
            for axis, x in zip(row_axes, (range(len(row["errors"])), row["evaluation_counts"])):
                axis.semilogy(list(x)[:201], row["errors"][:201], label=method, lw=1.2,
                              marker="." if method != "gradient descent" else None, markersize=3)
        for axis, unit in zip(row_axes, ("iterations k", "closure evaluations")):
            axis.axhline(TOLERANCE, color="grey", ls=":", lw=0.8)
            axis.set(xlabel=unit, ylabel="‖θ − θ*‖₂", title=f"{problem}: error against {unit} (first 200)",
                     ylim=(1e-16, 10))
            axis.grid(True, alpha=0.3)
        row_axes[0].legend(fontsize=8)
    figure.suptitle("fo.LBFGS (history 100, lr 1) against gradient descent (fo.SGD, lr 1/L), fp64; dotted: "
                    f"the tolerance {TOLERANCE:g} that the evaluations are counted to", fontsize=10)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.92, hspace=0.35, wspace=0.22)
    return figure


def print_table(results, made):
    print(f"p: order of e_k+1 ≈ C e_k^p; ratio: e_k+1/e_k at the tail; evals to {TOLERANCE:g}: closure evaluations "
          "one long step makes before ‖θ − θ*‖ ≤ it")
    for problem, summary in results.items():
        print(f"{problem} (λ_min(∇²f(θ*)) = {made[problem][2]:.3g}, L = {made[problem][0].smoothness():.3g})")
        print(f"  {'method':<22}{'iters':>6}{'evals':>6}{'‖θ−θ*‖':>9}{'p':>6}{'ratio':>9}{'evals to tol':>13}  notes")
        for method, row in summary.items():
            notes = (f"rate {row['rate']:.4f} / predicted {row['predicted_rate']:.4f}" if "rate" in row else
                     f"= torch.optim.LBFGS: {row['equals_torch']}; = one long step: {row['long_step_equal']}")
            print(f"  {method:<22}{row['iterations']:>6}{row['evaluations']:>6}{row['final_error']:>9.1e}"
                  f"{row['order']:>6.2f}{row['tail_ratio']:>9.1e}{str(row['evaluations_to_tolerance']):>13}  {notes}")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
