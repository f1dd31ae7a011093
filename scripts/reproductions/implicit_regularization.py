r"""Implicit gradient regularization: gradient descent follows a modified flow (Barrett & Dherin 2021).

Claim (seed 002, Su Jianlin, kexue.fm/archives/7787, after Barrett & Dherin, "Implicit Gradient
Regularization", ICLR 2021). Gradient descent with step size h,

    θ_{n+1} = θ_n − h ∇L(θ_n),

is Euler's method for the gradient flow θ' = −∇L, so after N = T/h steps it is O(h) away from that
flow's θ(T). Backward error analysis (the seed's operator series D = −(h D / (e^{hD} − 1)) g, cut after
its first-order term) finds the flow that gradient descent follows to a global error of O(h²):

    θ' = −∇L̃,   L̃ = L + (h/4) ‖∇L‖².

A finite step size thus adds a gradient-norm penalty, which steers towards flatter minima.

Measured here, with error = ‖θ_N − θ(T)‖ (Euclidean) at T = 1, for h = 0.2, 0.1, 0.05, 0.025:

- f(x) = x²/2 from x0 = 1: gradient descent gives x_N = (1 − h)^N; the plain flow e^{−T}; L̃ = (1 + h/2)
  x²/2, so the modified flow gives e^{−(1 + h/2) T}. At h = 0.1 the errors are |0.9¹⁰ − e^{−1}| = 1.92e-2
  and |0.9¹⁰ − e^{−1.05}| = 1.26e-3. The flows are these closed forms.
- E(a, b) = ½(1 − ab)² from (a, b) = (1.4, 1.75), the two-parameter model of Barrett & Dherin: both
  flows by RK4, the modified field −∇(E + (h/4)‖∇E‖²) by a double backward.
- The observed order between successive step sizes, log(e(h₁)/e(h₂)) / log(h₁/h₂): ≈ 1 against the
  plain flow, ≈ 2 against the modified flow, on both problems.
- Flatness: E's minima form the hyperbola ab = 1, where the Hessian is (b, a)(b, a)ᵀ with trace a² + b².
  The gradient flow conserves a² − b² and so ends at trace √((a0² − b0²)² + 4); one step of gradient
  descent multiplies a² − b² by 1 − h²(ab − 1)², and the modified flow has d(a² − b²)/dt =
  −h (ab − 1)² (a² − b²): the larger h, the nearer the balanced, flattest minimum a = b = 1. Gradient
  descent runs to convergence for several h; the Hessian trace (torch.autograd.functional.hessian) at
  its end point falls as h grows, as does the modified flow's, integrated to convergence alongside.
  The modified flow is a first-order account: at large h (h·λ_max ≈ 1.6 at h = 0.25, where the first
  step lands almost on the hyperbola) gradient descent flattens more than it predicts.

Arithmetic. The claim is about exact arithmetic. Gradient descent is our optim.SGD (momentum 0) on fp32
params, the precision its fused kernel runs in (it takes fp32/bf16/fp16; float64 params would take
the reference, in float64). Each step rounds by about 6e-8 relative, so the N ≤ 40
steps of the error runs drift by at most ~1e-6, over 50 times below the smallest error measured (7.7e-5,
x²/2 at h = 0.025 against the modified flow); the test checks x_N against (1 − h)^N in float64. The flows,
the exact side, are float64.
"""
import math
import sys

import torch

from fusedoptim import optim
from scripts.reproductions import common

NAME = "implicit_regularization"
CLAIM = ("Gradient descent with step h follows the flow of L + (h/4)·‖∇L‖² to O(h²), the plain gradient flow "
         "only to O(h); larger h ends at flatter minima")

HORIZON = 1.0  # T: the errors are measured at θ(T), after N = T/h steps
QUADRATIC_START = (1.0,)
PRODUCT_START = (1.4, 1.75)
# RK4's global error is O(dt⁴): at dt = 0.01 it is 3e-8 on E (against dt = 0.001), 1e-4 of the smallest
# error measured on E (3.6e-4).
RK4_STEP = 0.01
# Near the minima the flows contract at the rate a² + b² ≥ 2, so by t = 8 the residual |1 − ab| is below
# 1.45·e^{−16} ≈ 2e-7; the coarser step keeps the long integration quick and errs by under 1e-6.
CONVERGED_HORIZON, CONVERGED_RK4_STEP = 8.0, 0.02
# Gradient descent has converged when a step leaves θ unchanged: in fp32 that happens once h·∇E is below
# half an ulp of θ, at ‖∇E‖ below 1e-6 for h ≥ 0.05, which moves the trace a² + b² by about 1e-6.
MAX_STEPS = 5_000


def half_square(theta):
    """f(x) = x²/2, one value per row of ``theta``."""
    return 0.5 * theta.pow(2).sum(-1)


def product_loss(theta):
    """E(a, b) = ½(1 − ab)², one value per row of ``theta`` (a, b)."""
    return 0.5 * (1 - theta[..., 0] * theta[..., 1]) ** 2


def descent(loss_function, start, lr, impl):
    """Gradient descent with optim.SGD from ``start``, endlessly: yields θ after each step."""
    theta = torch.tensor(start, dtype=torch.float32, requires_grad=True)
    optimizer = optim.SGD([theta], lr=lr, impl=impl)
    while True:
        optimizer.zero_grad()
        loss_function(theta).backward()
        optimizer.step()
        yield theta.detach().clone()


def descend(loss_function, start, lr, steps, impl):
    """θ after ``steps`` steps of gradient descent."""
    for step, theta in enumerate(descent(loss_function, start, lr, impl), start=1):
        if step == steps:
            return theta


def descend_to_minimum(loss_function, start, lr, impl):
    """θ once a step of gradient descent leaves it unchanged."""
    previous = torch.tensor(start, dtype=torch.float32)
    for step, theta in enumerate(descent(loss_function, start, lr, impl), start=1):
        if torch.equal(theta, previous):
            return theta
        if step == MAX_STEPS:
            raise RuntimeError(f"gradient descent with lr={lr} still moved after {MAX_STEPS} steps; take a "
                               "smaller lr")
        previous = theta


def modified_field(loss_function, theta, coefficients):
    """−∇(L + c‖∇L‖²) at each row of ``theta``, with row i's own coefficient c_i (0: the plain flow)."""
    theta = theta.detach().requires_grad_()
    loss = loss_function(theta).sum()  # rows are independent points: ∇ of the sum is each row's gradient
    gradient, = torch.autograd.grad(loss, theta, create_graph=True)
    penalised = loss + (coefficients * gradient.pow(2).sum(-1)).sum()
    field, = torch.autograd.grad(penalised, theta)
    return -field


def integrate_flows(loss_function, start, step_sizes, horizon, dt):
    """θ(horizon) of the flow of L + (h/4)‖∇L‖² for each h (h = 0: the gradient flow), by RK4 in float64."""
    coefficients = torch.tensor(step_sizes, dtype=torch.float64) / 4
    theta = torch.tensor(start, dtype=torch.float64).repeat(len(step_sizes), 1)
    for _ in range(round(horizon / dt)):
        k1 = modified_field(loss_function, theta, coefficients)
        k2 = modified_field(loss_function, theta + dt / 2 * k1, coefficients)
        k3 = modified_field(loss_function, theta + dt / 2 * k2, coefficients)
        k4 = modified_field(loss_function, theta + dt * k3, coefficients)
        theta = theta + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return theta


def half_square_flow(step_size, horizon):
    """x(T) of the flow of x²/2 + (h/4)x² = (1 + h/2) x²/2 from x0: x0·e^{−(1 + h/2)T} (h = 0: plain)."""
    return torch.tensor([QUADRATIC_START[0] * math.exp(-(1 + step_size / 2) * horizon)], dtype=torch.float64)


def flow_errors(loss_function, start, step_sizes, plain_flow, modified_flows, impl):
    """‖θ_N − θ(T)‖ against the plain flow and against each h's modified flow."""
    plain, modified = [], []
    for step_size, modified_flow in zip(step_sizes, modified_flows):
        theta = descend(loss_function, start, step_size, round(HORIZON / step_size), impl).double()
        plain.append((theta - plain_flow).norm().item())
        modified.append((theta - modified_flow).norm().item())
    return plain, modified


def observed_orders(step_sizes, errors):
    """p with e ∝ h^p between each pair of successive step sizes."""
    pairs = zip(zip(step_sizes, errors), zip(step_sizes[1:], errors[1:]))
    return [math.log(e1 / e2) / math.log(h1 / h2) for (h1, e1), (h2, e2) in pairs]


def hessian_trace(theta):
    return torch.autograd.functional.hessian(product_loss, theta.double()).trace().item()


def error_study(step_sizes, impl):
    """Errors and orders of gradient descent against both flows, on x²/2 (closed forms) and on E (RK4)."""
    quadratic = flow_errors(half_square, QUADRATIC_START, step_sizes, half_square_flow(0, HORIZON),
                            [half_square_flow(h, HORIZON) for h in step_sizes], impl)
    flows = integrate_flows(product_loss, PRODUCT_START, [0, *step_sizes], HORIZON, RK4_STEP)
    product = flow_errors(product_loss, PRODUCT_START, step_sizes, flows[0], flows[1:], impl)
    return {name: {"plain": plain, "modified": modified, "plain_orders": observed_orders(step_sizes, plain),
                   "modified_orders": observed_orders(step_sizes, modified)}
            for name, (plain, modified) in (("quadratic", quadratic), ("product", product))}


def flatness_study(step_sizes, impl):
    """Hessian trace of E at the end point of gradient descent, and of the modified and plain flows."""
    flows = integrate_flows(product_loss, PRODUCT_START, [0, *step_sizes], CONVERGED_HORIZON, CONVERGED_RK4_STEP)
    return {"step_sizes": list(step_sizes),
            "gradient_descent": [hessian_trace(descend_to_minimum(product_loss, PRODUCT_START, h, impl))
                                 for h in step_sizes],
            "modified_flow": [hessian_trace(theta) for theta in flows[1:]],
            "gradient_flow": hessian_trace(flows[0])}


def run(out=None, step_sizes=(0.2, 0.1, 0.05, 0.025), trace_step_sizes=(0.05, 0.1, 0.15, 0.2, 0.25),
        impl="auto") -> dict:
    errors = error_study(step_sizes, impl)
    flatness = flatness_study(trace_step_sizes, impl)
    results = {"step_sizes": list(step_sizes), **errors, "trace": flatness}
    common.save(NAME, draw(results), csv_rows(results), out)
    print_table(results)
    return results


PROBLEMS = {"quadratic": "f = x²/2 from x0 = 1", "product": "E = ½(1 − ab)² from (1.4, 1.75)"}


def draw(results):
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 3, figsize=(15, 4.6))
    step_sizes = results["step_sizes"]
    for axis, (name, title) in zip(axes, PROBLEMS.items()):
        for flow, label, marker in (("plain", "against the gradient flow of L", "o"),
                                    ("modified", "against the flow of L + (h/4)‖∇L‖²", "s")):
            axis.loglog(step_sizes, results[name][flow], marker=marker, label=label)
        for order, errors, style in ((1, results[name]["plain"], ":"), (2, results[name]["modified"], "--")):
            guide = [errors[-1] * (h / step_sizes[-1]) ** order for h in step_sizes]
            axis.loglog(step_sizes, guide, style, color="grey", label=f"slope {order}")
        axis.set_xticks(step_sizes, [f"{h:g}" for h in step_sizes])
        axis.set_xticks([], minor=True)
        axis.set(title=f"{title}, T = {HORIZON:g}", xlabel="step size h", ylabel="‖θ_N − θ(T)‖")
        axis.legend(fontsize=8)
    trace = results["trace"]
    axes[2].plot(trace["step_sizes"], trace["gradient_descent"], "o-", label="gradient descent")
    axes[2].plot(trace["step_sizes"], trace["modified_flow"], "s--", label="flow of E + (h/4)‖∇E‖²")
    axes[2].axhline(trace["gradient_flow"], color="grey", linestyle=":", label="gradient flow (h → 0)")
    axes[2].set(title="E: flatness of the minimum reached", xlabel="step size h",
                ylabel="Hessian trace at the end point (a² + b²)")
    axes[2].legend(fontsize=8)
    figure.suptitle("Implicit gradient regularization: gradient descent follows L + (h/4)‖∇L‖²")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def csv_rows(results):
    rows = []
    for name in PROBLEMS:
        for flow in ("plain", "modified"):
            orders = [""] + results[name][f"{flow}_orders"]
            for step_size, error, order in zip(results["step_sizes"], results[name][flow], orders):
                rows.append(dict(kind="error", problem=name, flow=flow, step_size=step_size, error=error,
                                 order=order))
    trace = results["trace"]
    for step_size, descent_trace, flow_trace in zip(trace["step_sizes"], trace["gradient_descent"],
                                                    trace["modified_flow"]):
        rows.append(dict(kind="hessian_trace", problem="product", step_size=step_size,
                         gradient_descent_trace=descent_trace, modified_flow_trace=flow_trace,
                         gradient_flow_trace=trace["gradient_flow"]))
    return rows


def print_table(results):
    print("error ‖θ_N − θ(T)‖ at T = 1, against the plain / the modified flow (order vs the previous h)")
    print(f"{'h':>7} | {'x²/2 plain':>17} {'x²/2 modified':>17} | {'E plain':>17} {'E modified':>17}")
    for index, step_size in enumerate(results["step_sizes"]):
        cells = []
        for name in PROBLEMS:
            for flow in ("plain", "modified"):
                order = f"({results[name][f'{flow}_orders'][index - 1]:.2f})" if index else ""
                cells.append(f"{results[name][flow][index]:.3e} {order:>6}")
        print(f"{step_size:>7g} | {cells[0]} {cells[1]} | {cells[2]} {cells[3]}")
    trace = results["trace"]
    print(f"Hessian trace of E at the end point (gradient flow: {trace['gradient_flow']:.4f})")
    print(f"{'h':>7} | {'gradient descent':>16} | {'modified flow':>13}")
    for row in zip(trace["step_sizes"], trace["gradient_descent"], trace["modified_flow"]):
        print(f"{row[0]:>7g} | {row[1]:>16.4f} | {row[2]:>13.4f}")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
