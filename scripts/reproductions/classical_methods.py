r"""The classical optimizers on L2-regularised logistic regression: linear, superlinear, quadratic.

Claim (seed 004_21bcd73060106028.txt, a survey of gradient descent, mini-batch SGD, Newton, the
quasi-Newton methods DFP, BFGS and L-BFGS, conjugate gradient, momentum and Nesterov): gradient
descent converges linearly ("一阶收敛"), Newton's method quadratically ("牛顿法是二阶收敛"), the quasi-Newton
methods in between ("足以产生超线性收敛性"); SGD ends near the optimum, not at it ("在全局最优解附近").

Problem: f(θ) = (1/n) Σ_i log(1 + exp(−y_i x_iᵀθ)) + (λ/2)‖θ‖², y_i ∈ {±1}, Gaussian x_i with column
scales 1 … √10 (so that the Hessian is not trivially conditioned), fp64. The L2 term makes f λ-strongly
convex: one finite minimiser θ*, and ‖θ − θ*‖ ≤ ‖∇f(θ)‖/λ for every θ, a certificate that needs no
trust in any solver. θ* is scipy.optimize.minimize(method="trust-exact", jac, hess), polished by
scipy.optimize.root on ∇f = 0 (see reference_optimum): ‖∇f(θ*)‖ ~ 1e-17.

First-order methods run our optim.SGD on fp64 params. Its Triton kernel supports fp32/bf16/fp16 only, so
impl="reference" runs them, in fp64 as torch.optim does (the reference computes in a float64 param's
own dtype): momentum and Nesterov reach fp64's floor, GD is 1.4e-8 away after its 1000 steps.
With L = λ_max(XᵀX)/(4n) + λ ≥ ‖∇²f‖:
    gradient descent   θ ← θ − η g,                   η = 1/L
    mini-batch SGD     θ ← θ − η g_B,                 B rows drawn afresh every step
    momentum (torch)   b ← μ b + g,  θ ← θ − η b,     Polyak's η, μ for the a-priori bounds λ, L
    Nesterov (torch)   b ← μ b + g,  θ ← θ − η(g + μ b),  η = 1/L, μ = (√κ − 1)/(√κ + 1), κ = L/λ
The second-order methods are dense fp64 references below, each with its update in its docstring.

An error sequence e_k = ‖θ_k − θ*‖ converges linearly if e_{k+1}/e_k → r ∈ (0, 1), superlinearly if
e_{k+1}/e_k → 0, quadratically if e_{k+1}/e_k² stays bounded. The linear rate r of GD, momentum and
Nesterov is predicted as the spectral radius of the method's iteration linearised at θ*.
"""
import math
import sys
from dataclasses import dataclass

import numpy
import scipy.optimize
import torch
import torch.nn.functional as F

from fusedoptim import optim
from scripts.reproductions import common

NAME = "classical_methods"
CLAIM = ("On logistic regression GD, momentum and Nesterov converge linearly, DFP and BFGS superlinearly, "
         "Newton quadratically; mini-batch SGD stops at its noise level")
SCIPY_TWIN = {"Newton": "Newton-CG", "BFGS": "BFGS", "L-BFGS": "L-BFGS-B", "CG": "CG"}
# Near where the fp64 methods stop (‖∇f‖ ≤ 1e-12, so ‖θ − θ*‖ ≤ 1e-10), far above θ*'s own error
# (~1e-15) and fp64 rounding: rates are measured above it.
ERROR_FLOOR = 1e-11


@dataclass(frozen=True)
class LogisticRegression:
    features: torch.Tensor  # n × d, fp64
    labels: torch.Tensor  # n, each ±1
    l2: float

    def loss(self, theta, rows=slice(None)):
        margins = self.labels[rows] * (self.features[rows] @ theta)
        return F.softplus(-margins).mean() + self.l2 / 2 * (theta @ theta)  # softplus(−m) = log(1 + e^−m)

    def gradient(self, theta, rows=slice(None)):
        """−(1/|rows|) Σ y_i σ(−y_i x_iᵀθ) x_i + λθ, by hand: torch.func.grad agrees (the test checks)
        but costs ~15× more per call, and the methods here take thousands of gradients."""
        return self.per_sample_gradients(theta, rows).mean(dim=0)

    def per_sample_gradients(self, theta, rows=slice(None)):
        """Row i: the gradient of log(1 + e^(−y_i x_iᵀθ)) + (λ/2)‖θ‖²."""
        features, labels = self.features[rows], self.labels[rows]
        weights = -labels * torch.sigmoid(-labels * (features @ theta))
        return weights[:, None] * features + self.l2 * theta

    def hessian(self, theta):
        return torch.func.hessian(self.loss)(theta)

    def smoothness(self) -> float:
        """L ≥ λ_max(∇²f) everywhere, since σ' ≤ 1/4."""
        samples = self.features.shape[0]
        return torch.linalg.eigvalsh(self.features.T @ self.features)[-1].item() / (4 * samples) + self.l2


def make_problem(samples=500, features=10, l2=1e-2, seed=0) -> LogisticRegression:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, 0.5, features, dtype=torch.float64)
    inputs = torch.randn(samples, features, generator=generator, dtype=torch.float64) * scales
    truth = torch.randn(features, generator=generator, dtype=torch.float64)
    positive = torch.rand(samples, generator=generator, dtype=torch.float64) < torch.sigmoid(inputs @ truth)
    return LogisticRegression(inputs, positive.double() * 2 - 1, l2)


def first_order(problem, steps, lr, momentum=0.0, nesterov=False, batch_size=None, seed=0):
    """The iterates of our optim.SGD from θ = 0: full gradients, or B rows drawn afresh each step."""
    samples, features = problem.features.shape
    theta = torch.zeros(features, dtype=torch.float64, requires_grad=True)
    # fp64 params: the Triton kernel does not take them; the reference does, in fp64 math.
    optimizer = optim.SGD([theta], lr=lr, momentum=momentum, nesterov=nesterov, impl="reference")
    generator = torch.Generator().manual_seed(seed)
    iterates = [theta.detach().clone()]
    for _ in range(steps):
        rows = slice(None) if batch_size is None else torch.randperm(samples, generator=generator)[:batch_size]
        theta.grad = problem.gradient(theta.detach(), rows)
        optimizer.step()
        iterates.append(theta.detach().clone())
    return iterates


def first_order_settings(problem):
    """Each first-order method's (lr, momentum, nesterov, batch size) from the a-priori bounds λ ≤ ∇²f ≤ L."""
    smooth, strong = problem.smoothness(), problem.l2
    root_condition = math.sqrt(smooth / strong)  # √κ
    polyak_lr = 4 / (math.sqrt(smooth) + math.sqrt(strong)) ** 2
    return {
        "gradient descent": dict(lr=1 / smooth),
        "momentum": dict(lr=polyak_lr, momentum=((root_condition - 1) / (root_condition + 1)) ** 2),
        "Nesterov": dict(lr=1 / smooth, momentum=(root_condition - 1) / (root_condition + 1), nesterov=True),
        "mini-batch SGD": dict(lr=1 / smooth, batch_size=50),
    }


def predicted_rate(hessian, lr, momentum=0.0, nesterov=False) -> float:
    """Spectral radius of the iteration linearised at θ*, mode by mode (eigenvalue h of H*): the
    error e and buffer b move by (e, b) ← A (e, b) with b ← μb + h e first, then
    e ← e − η b (heavy ball) or e ← e − η(h e + μ b) (Nesterov); GD is A = 1 − η h."""
    radius = 0.0
    for h in torch.linalg.eigvalsh(hessian).tolist():
        if momentum == 0:
            matrix = numpy.array([[1 - lr * h]])
        elif nesterov:
            matrix = numpy.array([[1 - lr * (1 + momentum) * h, -lr * momentum ** 2], [h, momentum]])
        else:
            matrix = numpy.array([[1 - lr * h, -lr * momentum], [h, momentum]])
        radius = max(radius, numpy.abs(numpy.linalg.eigvals(matrix)).max())
    return float(radius)


def line_search(problem, theta, direction, gradient, curvature):
    r"""θ + t·d for a t meeting the strong Wolfe conditions (c₁ = 1e-4, c₂ = ``curvature``):
        φ(t) ≤ φ(0) + c₁ t φ'(0) + ε|φ(0)|,    |φ'(t)| ≤ c₂ |φ'(0)|,    φ(t) = f(θ + t d).
    t = 1 first, doubled until it is too far, then the secant zero of φ' between the bracket's ends
    (exact for a quadratic φ), kept in the bracket's inner 80% so that the bracket always shrinks.
    ε|φ(0)| (ε = 1e-14) forgives the fp64 rounding of f near θ*, where the true decrease is below it
    (Hager & Zhang 2005 do the same); the curvature condition, on gradients, still holds exactly."""
    value, slope = problem.loss(theta).item(), (gradient @ direction).item()
    if slope >= 0:
        raise ValueError(f"direction is not a descent direction (∇f·d = {slope:.2e} ≥ 0)")
    low, high, step = (0.0, slope), None, 1.0  # the bracket's ends as (t, φ'(t))
    for _ in range(100):
        candidate = theta + step * direction
        candidate_gradient = problem.gradient(candidate)
        candidate_slope = (candidate_gradient @ direction).item()
        too_far = problem.loss(candidate).item() > value + 1e-4 * step * slope + 1e-14 * abs(value)
        if too_far or candidate_slope > -curvature * slope:
            high = (step, candidate_slope)
        elif candidate_slope < curvature * slope:
            low = (step, candidate_slope)
        else:
            return candidate, candidate_gradient
        if high is None:
            step *= 2
            continue
        (start, start_slope), (end, end_slope) = low, high
        secant = start - start_slope * (end - start) / (end_slope - start_slope) if end_slope > start_slope else start
        step = min(max(secant, start + 0.1 * (end - start)), end - 0.1 * (end - start))
    raise RuntimeError(f"line search found no strong Wolfe step between t = {low[0]:.3e} and {high[0]:.3e}")


@dataclass(frozen=True)
class Step:
    change: torch.Tensor  # s = θ_{k+1} − θ_k
    gradient_change: torch.Tensor  # y = g_{k+1} − g_k
    direction: torch.Tensor  # d_k, of which s is a multiple


def minimise(problem, direction, curvature=0.1, gradient_tolerance=1e-12, max_steps=200):
    """The iterates θ_{k+1} = θ_k + t_k d_k from θ = 0, d_k = direction(problem, θ_k, g_k, history),
    until ‖∇f‖ ≤ gradient_tolerance (then ‖θ − θ*‖ ≤ gradient_tolerance/λ).

    c₂ = ``curvature`` = 0.1 for every method, a nearly exact line search. With the quasi-Newton
    textbook c₂ = 0.9, DFP and BFGS took 57 and 37 steps here and reached the error floor while still
    entering their superlinear phase (fitted order 1.04, 1.06), and CG did not reach ‖∇f‖ ≤ 1e-12 in
    200 steps."""
    theta = torch.zeros(problem.features.shape[1], dtype=torch.float64)
    gradient, iterates, history = problem.gradient(theta), [theta], []
    while gradient.norm() > gradient_tolerance:
        if len(history) == max_steps:
            raise RuntimeError(f"{direction.__name__}: ‖∇f‖ = {gradient.norm():.1e} after {max_steps} steps")
        step_direction = direction(problem, theta, gradient, history)
        new_theta, new_gradient = line_search(problem, theta, step_direction, gradient, curvature)
        history.append(Step(new_theta - theta, new_gradient - gradient, step_direction))
        theta, gradient = new_theta, new_gradient
        iterates.append(theta)
    return iterates


def newton(problem, theta, gradient, history):
    """d = −∇²f(θ)⁻¹ ∇f(θ), the Hessian from torch.func.hessian."""
    return -torch.linalg.solve(problem.hessian(theta), gradient)


def dfp_update(inverse, s, y):
    """DFP (Davidon 1959; Fletcher & Powell 1963): H ← H + s sᵀ/(sᵀy) − H y yᵀ H/(yᵀ H y)."""
    hy = inverse @ y
    return inverse + torch.outer(s, s) / (s @ y) - torch.outer(hy, hy) / (y @ hy)


def bfgs_update(inverse, s, y):
    """BFGS (1970): H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, ρ = 1/(yᵀs)."""
    rho, identity = 1 / (y @ s), torch.eye(len(s), dtype=s.dtype)
    left = identity - rho * torch.outer(s, y)
    return left @ inverse @ left.T + rho * torch.outer(s, s)


def quasi_newton(update):
    """d = −H_k g, H_0 = I and H_k the inverse-Hessian estimate after ``update`` with each (s, y) so far."""
    def direction(problem, theta, gradient, history):
        inverse = torch.eye(len(theta), dtype=theta.dtype)
        for step in history:  # yᵀs > 0 always: f is strictly convex
            inverse = update(inverse, step.change, step.gradient_change)
        return -inverse @ gradient
    direction.__name__ = update.__name__.replace("_update", "")
    return direction


def lbfgs(problem, theta, gradient, history, memory=5):
    """L-BFGS (Nocedal 1980) two-loop recursion over the last m pairs (s_i, y_i), H_0 = (sᵀy/yᵀy) I:
    q ← g; newest to oldest: α_i = ρ_i s_iᵀq, q ← q − α_i y_i; r ← H_0 q;
    oldest to newest: β = ρ_i y_iᵀr, r ← r + (α_i − β) s_i; d = −r."""
    recent = history[-memory:]
    q, alphas = gradient.clone(), []
    for step in reversed(recent):
        alphas.append((step.change @ q) / (step.gradient_change @ step.change))
        q = q - alphas[-1] * step.gradient_change
    if recent:
        newest = recent[-1]
        q = q * (newest.change @ newest.gradient_change) / (newest.gradient_change @ newest.gradient_change)
    for step, alpha in zip(recent, reversed(alphas)):
        beta = (step.gradient_change @ q) / (step.gradient_change @ step.change)
        q = q + (alpha - beta) * step.change
    return -q


def conjugate_gradient(problem, theta, gradient, history):
    """Nonlinear CG, Polak–Ribière+ (Gilbert & Nocedal 1992): d = −g + β d_prev,
    β = max(0, gᵀ(g − g_prev)/‖g_prev‖²), restarted (β = 0) every d steps and whenever d is not downhill."""
    if not history or len(history) % len(theta) == 0:
        return -gradient
    previous = gradient - history[-1].gradient_change
    beta = max(0.0, ((gradient @ history[-1].gradient_change) / (previous @ previous)).item())
    direction = -gradient + beta * history[-1].direction
    return direction if direction @ gradient < 0 else -gradient


SECOND_ORDER = {"Newton": newton, "DFP": quasi_newton(dfp_update), "BFGS": quasi_newton(bfgs_update),
                "L-BFGS": lbfgs, "CG": conjugate_gradient}


def scipy_minimise(problem, method, tolerance=1e-14):
    """scipy.optimize.minimize from θ = 0 with fp64 jac (and hess where the method takes one)."""
    def as_tensor(x):
        return torch.from_numpy(numpy.asarray(x, dtype=numpy.float64))
    arguments = dict(fun=lambda x: problem.loss(as_tensor(x)).item(),
                     jac=lambda x: problem.gradient(as_tensor(x)).numpy(), method=method)
    if method in ("Newton-CG", "trust-exact"):
        arguments["hess"] = lambda x: problem.hessian(as_tensor(x)).numpy()
    options = {"Newton-CG": dict(xtol=tolerance), "L-BFGS-B": dict(gtol=tolerance, ftol=tolerance)}
    result = scipy.optimize.minimize(x0=numpy.zeros(problem.features.shape[1]),
                                     options=options.get(method, dict(gtol=tolerance)), **arguments)
    return torch.from_numpy(result.x), result.nit


def reference_optimum(problem):
    """θ*: scipy's trust-exact minimiser, then scipy.optimize.root on ∇f(θ) = 0 (jac = ∇²f) from there.
    minimize judges steps by values of f, whose decrease ~‖∇f‖²/λ sinks below f's fp64 rounding once
    ‖∇f‖ ~ 1e-9: trust-exact stopped anywhere from 1e-17 to 1e-9 over data seeds 0-7 (BFGS, CG and
    Newton-CG near 1e-9, the table's scipy column). The root finder uses gradients only: ~1e-17 on each."""
    start, _ = scipy_minimise(problem, "trust-exact")
    result = scipy.optimize.root(lambda x: problem.gradient(torch.from_numpy(x)).numpy(), start.numpy(),
                                 jac=lambda x: problem.hessian(torch.from_numpy(x)).numpy(),
                                 options=dict(xtol=1e-15))
    return torch.from_numpy(result.x)


def error_floor(errors) -> float:
    """100× the smallest error (a stall, θ*'s own error, rounding), and at least ERROR_FLOOR: rates are
    measured above it, where the error is the method's."""
    return max(ERROR_FLOOR, 100 * min(errors))


def asymptotic_pairs(errors):
    """(e_k, e_{k+1}) past the first decade (e_k < e_0/10) and above the floor (e_{k+1} > error_floor)."""
    floor = error_floor(errors)
    return [(before, after) for before, after in zip(errors, errors[1:]) if before < errors[0] / 10 and after > floor]


def convergence_order(errors) -> float:
    """p in e_{k+1} ≈ C e_k^p: the least-squares slope of log e_{k+1} against log e_k over the asymptotic
    pairs. Linear convergence gives 1 whatever its rate, quadratic 2, superlinear in between."""
    pairs = numpy.log(asymptotic_pairs(errors))
    if len(pairs) < 2:
        raise ValueError(f"{len(pairs)} asymptotic error pairs: too few to fit an order")
    return float(numpy.polyfit(pairs[:, 0], pairs[:, 1], 1)[0])


def tail_ratio(errors, last=3) -> float:
    """Geometric mean of e_{k+1}/e_k over the last ``last`` asymptotic pairs: → 0 when superlinear."""
    pairs = numpy.asarray(asymptotic_pairs(errors)[-last:])
    return float(numpy.exp(numpy.log(pairs[:, 1] / pairs[:, 0]).mean()))


def linear_rate(errors) -> float:
    """r of a linear method: exp of the least-squares slope of log e_k against k, over the e_k between
    e_0/100 (transients gone) and the floor; the fit averages over momentum's oscillations."""
    errors = numpy.asarray(errors)
    window = numpy.flatnonzero((errors < errors[0] / 100) & (errors > error_floor(errors)))
    if len(window) < 10:
        raise ValueError(f"only {len(window)} errors between e_0/100 and the floor: run more steps")
    return float(math.exp(numpy.polyfit(window, numpy.log(errors[window]), 1)[0]))


def newton_bound(problem) -> float:
    """C in e_{k+1} ≤ C e_k² for Newton's full step: M/(2λ), M the Lipschitz constant of ∇²f,
    M ≤ max|σ''| · mean‖x_i‖³ with max|σ''| = 1/(6√3), and λ ≤ λ_min(∇²f) everywhere. A worst case."""
    return (problem.features.norm(dim=1) ** 3).mean().item() / (6 * math.sqrt(3)) / (2 * problem.l2)


def sgd_noise_level(problem, theta_star, lr, batch_size) -> float:
    """Predicted RMS of ‖θ − θ*‖ for constant-lr SGD at stationarity, linearised at θ*:
    S = (I − ηH) S (I − ηH) + η² Σ_B, whose trace in H's eigenbasis is Σ_i η² Σ_B,ii / (1 − (1 − ηh_i)²).
    Σ_B is the covariance of a B-row mean drawn without replacement: (n − B)/((n − 1)B) times the
    per-sample gradient covariance."""
    samples = problem.features.shape[0]
    per_sample = problem.per_sample_gradients(theta_star)
    covariance = torch.cov(per_sample.T, correction=0) * (samples - batch_size) / ((samples - 1) * batch_size)
    eigenvalues, eigenvectors = torch.linalg.eigh(problem.hessian(theta_star))
    diagonal = torch.diagonal(eigenvectors.T @ covariance @ eigenvectors)
    return math.sqrt((lr ** 2 * diagonal / (1 - (1 - lr * eigenvalues) ** 2)).sum().item())


def run(out=None, samples=500, features=10, l2=1e-2, seed=0, steps=1000, sgd_steps=1000) -> dict:
    problem = make_problem(samples, features, l2, seed)
    theta_star = reference_optimum(problem)
    hessian_star = problem.hessian(theta_star)
    settings = first_order_settings(problem)
    iterates = {name: first_order(problem, sgd_steps if "batch_size" in options else steps, **options)
                for name, options in settings.items()}
    iterates.update({name: minimise(problem, direction) for name, direction in SECOND_ORDER.items()})
    errors = {name: [(theta - theta_star).norm().item() for theta in thetas]
              for name, thetas in iterates.items()}

    summary = {name: dict(method=name, iterations=len(sequence) - 1, final_error=sequence[-1])
               for name, sequence in errors.items()}
    for name, row in summary.items():
        if name == "mini-batch SGD":
            tail = numpy.asarray(errors[name][sgd_steps // 3:])  # past the transient (~150 steps)
            row.update(tail_rms_error=float(numpy.sqrt((tail ** 2).mean())),
                       predicted_rms_error=sgd_noise_level(problem, theta_star, **settings[name]))
            continue
        row["order"] = convergence_order(errors[name])
        if name in settings:
            row.update(rate=linear_rate(errors[name]),
                       predicted_rate=predicted_rate(hessian_star, **settings[name]))
        else:
            row["tail_ratio"] = tail_ratio(errors[name])
        if name == "Newton":
            pairs = asymptotic_pairs(errors[name])
            row.update(quadratic_constant=max(after / before ** 2 for before, after in pairs),
                       quadratic_bound=newton_bound(problem))
        if name in SCIPY_TWIN:
            theta, iterations = scipy_minimise(problem, SCIPY_TWIN[name])
            row.update(scipy_method=SCIPY_TWIN[name], scipy_iterations=iterations,
                       scipy_gradient=problem.gradient(theta).norm().item(),
                       distance_to_scipy=(iterates[name][-1] - theta).norm().item())
        row["final_gradient"] = problem.gradient(iterates[name][-1]).norm().item()

    # Every error of the first 50 iterations, then every 10th: the long linear tails lose nothing, and
    # the CSV stays small.
    rows = [dict(kind="summary", **row) for row in summary.values()]
    rows += [dict(kind="error", method=name, iteration=k, error=e)
             for name, sequence in errors.items() for k, e in enumerate(sequence) if k <= 50 or k % 10 == 0]
    common.save(NAME, draw(errors, summary), rows, out)
    print_table(summary, problem.gradient(theta_star).norm().item())
    return dict(problem=problem, theta_star=theta_star, hessian_star=hessian_star, settings=settings,
                iterates=iterates, errors=errors, summary=summary)


def draw(errors, summary):
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 2, figsize=(12, 4.8))
    for name, sequence in errors.items():
        for axis, last in zip(axes, (len(sequence), 40)):
            axis.semilogy(sequence[:last + 1], label=name, lw=1.2)
        if "predicted_rate" in summary[name]:  # the predicted r^k over the window its rate was fitted on
            start = next(k for k, e in enumerate(sequence) if e < sequence[0] / 100)
            end = next(k for k, e in enumerate(sequence) if e < error_floor(sequence))
            predicted_end = sequence[start] * summary[name]["predicted_rate"] ** (end - start)
            axes[0].semilogy([start, end], [sequence[start], predicted_end], ls=":", color="black", lw=1)
    axes[0].set_title("all methods (dotted: the predicted linear rate, r^k)")
    axes[1].set_title("first 40 iterations: linear, superlinear, quadratic")
    for axis in axes:
        axis.set_xlabel("iteration k")
        axis.set_ylabel("‖θ_k − θ*‖₂")
        axis.set_ylim(1e-16, 10)
        axis.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.suptitle("L2-regularised logistic regression in fp64; the first-order methods are optim.SGD, "
                    "impl='reference', in fp64", fontsize=10)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.88, wspace=0.22)  # tight_layout costs 2 s
    return figure


def print_table(summary, reference_gradient):
    print(f"θ* from scipy (trust-exact, then root), ‖∇f(θ*)‖ = {reference_gradient:.1e}. "
          "p: order, e_k+1 ≈ C e_k^p; ratio: e_k+1/e_k at the tail")
    print(f"{'method':<17}{'iters':>6}{'‖θ−θ*‖':>9}{'p':>6}{'ratio':>9}  rate measured / predicted, or other checks")
    for name, row in summary.items():
        if name == "mini-batch SGD":
            print(f"{name:<17}{row['iterations']:>6}{row['final_error']:>9.1e}{'':>15}  RMS ‖θ−θ*‖ over the tail "
                  f"{row['tail_rms_error']:.3f} / predicted {row['predicted_rms_error']:.3f}")
            continue
        notes = f"{row['rate']:.4f} / {row['predicted_rate']:.4f}" if "rate" in row else ""
        if "quadratic_constant" in row:
            notes += f"max e_k+1/e_k² {row['quadratic_constant']:.2f} ≤ bound {row['quadratic_bound']:.0f}  "
        if "scipy_method" in row:
            notes += (f"scipy {row['scipy_method']}: {row['scipy_iterations']} iters, "
                      f"‖∇f‖ {row['scipy_gradient']:.0e}, ‖ours − scipy‖ {row['distance_to_scipy']:.0e}")
        ratio = f"{row['tail_ratio']:>9.1e}" if "tail_ratio" in row else f"{'':>9}"
        print(f"{name:<17}{row['iterations']:>6}{row['final_error']:>9.1e}{row['order']:>6.2f}{ratio}  {notes}")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
