"""Implicit gradient regularization (seed 002; Barrett & Dherin 2021): gradient descent with step h is
O(h) from the gradient flow of L and O(h²) from the flow of L + (h/4)‖∇L‖², and ends at flatter minima
as h grows; and the explicit penalty optim.with_gradient_penalty, checked against the Hessian."""
import math

import pytest
import torch

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from fusedoptim import optim  # noqa: E402
from scripts.reproductions import implicit_regularization as reproduction  # noqa: E402
from tests.conftest import run_reproduction  # noqa: E402

STEP_SIZES = (0.2, 0.1, 0.05, 0.025)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # The reference SGD: the error and convergence runs take a few hundred steps, each of which the
    # interpreted kernel would take ~15 ms for; test_gradient_descent_is_exact_to_fp32 covers impl="auto".
    return run_reproduction(reproduction, tmp_path_factory, step_sizes=STEP_SIZES, impl="reference")


def test_run_writes_the_figure_and_the_numbers(results):
    out = results["out"]
    assert (out / f"{reproduction.NAME}.png").stat().st_size > 0
    csv = (out / f"{reproduction.NAME}.csv").read_text()
    assert csv.count("\n") == 1 + 2 * 2 * len(STEP_SIZES) + len(results["trace"]["step_sizes"])
    assert "hessian_trace" in csv


def test_errors_near_h_0_1_match_the_issue(results):
    index = STEP_SIZES.index(0.1)
    # The issue gives three significant figures: half a unit of the last one. fp32 steps add ~1e-7.
    assert results["quadratic"]["plain"][index] == pytest.approx(1.92e-2, abs=0.005e-2)
    assert results["quadratic"]["modified"][index] == pytest.approx(1.26e-3, abs=0.005e-3)


@pytest.mark.parametrize("problem", ["quadratic", "product"])
def test_orders_are_one_against_the_plain_flow_and_two_against_the_modified(results, problem):
    plain, modified = results[problem]["plain_orders"], results[problem]["modified_orders"]
    # An observed order reaches the asymptotic one with an O(h) correction: up to 0.18 between h = 0.2
    # and 0.1 on E, 0.06 at the smallest pair. Off by one order (a wrong flow) would miss by 1.
    assert plain == pytest.approx([1.0] * len(plain), abs=0.2)
    assert modified == pytest.approx([2.0] * len(modified), abs=0.2)
    assert plain[-1] == pytest.approx(1.0, abs=0.08)
    assert modified[-1] == pytest.approx(2.0, abs=0.08)


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_gradient_descent_is_exact_to_fp32(impl):
    # GD on x²/2 is x_N = (1 − h)^N exactly; our fp32 SGD may drift by ~1 ulp (6e-8) per step: 10 steps
    # stay under 1e-6, 50 times below the smallest error the reproduction measures.
    theta = reproduction.descend(reproduction.half_square, reproduction.QUADRATIC_START, 0.1, 10, impl)
    assert theta.item() == pytest.approx(0.9 ** 10, abs=1e-6)


def test_rk4_matches_the_closed_form_flows():
    step_sizes = [0, *STEP_SIZES]
    flows = reproduction.integrate_flows(reproduction.half_square, reproduction.QUADRATIC_START, step_sizes,
                                         reproduction.HORIZON, reproduction.RK4_STEP)
    for flow, step_size in zip(flows, step_sizes):
        # RK4 at dt = 0.01 errs by ~4e-11 on this flow; a wrong coefficient (h/2 for h/4) would miss by 1e-2.
        torch.testing.assert_close(flow, reproduction.half_square_flow(step_size, reproduction.HORIZON),
                                   atol=1e-9, rtol=0)


def test_gradient_flow_ends_where_its_invariant_says(results):
    # The gradient flow of E conserves a² − b², so it ends on ab = 1 at a² + b² = √((a0² − b0²)² + 4).
    a, b = reproduction.PRODUCT_START
    # The long RK4 errs by under 1e-6 in θ, a few 1e-6 in the trace.
    assert results["trace"]["gradient_flow"] == pytest.approx(math.sqrt((a * a - b * b) ** 2 + 4), abs=1e-5)


def test_hessian_trace_falls_as_the_step_size_grows(results):
    trace = results["trace"]
    descent, modified = trace["gradient_descent"], trace["modified_flow"]
    # Successive traces differ by 4e-3 or more; fp32 end points move a trace by ~1e-6.
    assert all(later < earlier - 1e-3 for earlier, later in zip(descent, descent[1:])), descent
    assert all(later < earlier for earlier, later in zip(modified, modified[1:])), modified
    assert max(descent) < trace["gradient_flow"]
    # The modified flow is a first-order account: gradient descent flattens at least as much as it says.
    assert all(d <= m for d, m in zip(descent, modified))


# ---- optim.with_gradient_penalty ----------------------------------------------------------------------

def quadratic_problem():
    """L(w, v) = ½θᵀAθ + cᵀθ with θ = (w, v): two param tensors, so the penalty's norm spans both."""
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    root, shift = draw(5, 5), draw(5)
    matrix = root @ root.T + torch.eye(5, dtype=torch.float64)  # symmetric positive definite

    def loss(w, v):
        theta = torch.cat([w, v])
        return 0.5 * theta @ matrix @ theta + shift @ theta

    return loss, [draw(3), draw(2)]


def hand_gradient(loss, params, coefficient):
    """∇L + 2μ·H∇L, with ∇L and H from torch.autograd.functional (no double backward through the penalty)."""
    flat = torch.cat(params)
    sizes = [p.numel() for p in params]

    def flat_loss(theta):
        return loss(*theta.split(sizes))

    gradient = torch.autograd.functional.jacobian(flat_loss, flat)
    hessian = torch.autograd.functional.hessian(flat_loss, flat)
    return gradient + 2 * coefficient * hessian @ gradient


def product_problem():
    return reproduction.product_loss, [torch.tensor([1.4, 1.75], dtype=torch.float64)]


@pytest.mark.parametrize("problem", [quadratic_problem, product_problem], ids=["quadratic", "product"])
def test_penalised_gradient_is_gradient_plus_twice_mu_hessian_gradient(problem):
    loss, values = problem()
    coefficient = 0.3
    params = [value.clone().requires_grad_() for value in values]
    optim.with_gradient_penalty(loss(*params), params, coefficient).backward()
    actual = torch.cat([param.grad for param in params])
    # float64 on both sides, different operation orders: a few ulps.
    torch.testing.assert_close(actual, hand_gradient(loss, values, coefficient), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_one_sgd_step_on_the_penalised_loss(impl):
    loss, values = quadratic_problem()
    lr, coefficient = 0.01, 0.05
    params = [value.float().requires_grad_() for value in values]
    optimizer = optim.SGD(params, lr=lr, impl=impl)
    optim.with_gradient_penalty(loss(*[p.double() for p in params]), params, coefficient).backward()
    optimizer.step()
    expected = torch.cat(values) - lr * hand_gradient(loss, values, coefficient)
    # fp32 params and update: a few ulps of fp32 at |θ| ≈ 2.
    torch.testing.assert_close(torch.cat([p.detach() for p in params]).double(), expected, atol=1e-6, rtol=1e-6)


def test_bad_input_names_the_problem():
    param = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="loss must be a scalar tensor, got \\(2,\\)"):
        optim.with_gradient_penalty(param * 2, [param], 0.1)
    with pytest.raises(ValueError, match="loss does not require grad"):
        optim.with_gradient_penalty(param.detach().sum(), [param], 0.1)
    frozen = torch.tensor([3.0])
    with pytest.raises(ValueError, match="params\\[1\\] \\(shape \\(1,\\)\\) does not require grad"):
        optim.with_gradient_penalty((param.sum() * frozen).sum(), [param, frozen], 0.1)
    with pytest.raises(ValueError, match="params is empty"):
        optim.with_gradient_penalty(param.sum(), [], 0.1)
    with pytest.raises(TypeError, match="params\\[0\\] is a float"):
        optim.with_gradient_penalty(param.sum(), [1.0], 0.1)
    for coefficient in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"coefficient must be finite and >= 0, got {coefficient}"):
            optim.with_gradient_penalty(param.sum(), [param], coefficient)
    with pytest.raises(TypeError, match="coefficient must be a real number, got str"):
        optim.with_gradient_penalty(param.sum(), [param], "0.1")
