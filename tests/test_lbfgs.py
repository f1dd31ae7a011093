"""fo.LBFGS against torch.optim.LBFGS: params and every state after each of several step(closure)
calls, on three small problems, with and without the strong Wolfe line search, both impls (the
fused one under the Triton interpreter on the CPU); torch's optim_db inputs and error inputs;
state_dicts both ways; bad input refused before anything changes; torch.compile of the step, beside
torch's.

The reference does torch's operations in torch's order: it must match bit for bit. The fused impl
sums its dot products in another order (per block, then per program): fp32 rounding apart, so params
and states compare at 1e-4 and every host-side decision (the iteration and evaluation counts, which
pairs enter the history) must be torch's exactly. Each problem stops short of its minimum
(max_iter · steps iterations), where the stopping tests would compare rounding noise.
"""
import inspect

import pytest
import torch

import fusedoptim as fo
from fusedoptim.optim.lbfgs import LBFGS
from tests.optim_db import (DIRECTIONS, assert_raises_as_torch, error_id, error_inputs, handed_across, info_of,
                            optim_inputs)

IMPLS = ("reference", "triton")
STEPS = 3  # the first step starts the history; the next two carry it over, through the state
FUSED = dict(rtol=1e-4, atol=1e-4)
EXACT = dict(rtol=0, atol=0)


def quadratic():
    """½xᵀAx − bᵀx, A positive definite with condition number ~30: the textbook case."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(11, 11, generator=generator))
    a, b = q @ torch.diag(torch.linspace(1, 30, 11)) @ q.T, torch.randn(11, generator=generator)
    params = [torch.nn.Parameter(torch.randn(11, generator=generator))]
    return params, lambda ps: 0.5 * ps[0] @ a @ ps[0] - b @ ps[0]


def rosenbrock():
    """Rosenbrock's valley in 2-D from (−1.5, 2): curved, where the line search earns its keep."""
    params = [torch.nn.Parameter(torch.tensor([-1.5, 2.0]))]
    return params, lambda ps: (1 - ps[0][0]) ** 2 + 100 * (ps[0][1] - ps[0][0] ** 2) ** 2


def regression():
    """A tiny linear regression with three params of odd sizes (a 3×5 weight, a 3-bias, a scalar scale)."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(13, 5, generator=generator), torch.randn(13, 3, generator=generator)
    params = [torch.nn.Parameter(0.3 * torch.randn(3, 5, generator=generator)), torch.nn.Parameter(torch.zeros(3)),
              torch.nn.Parameter(torch.ones(()))]
    return params, lambda ps: ((ps[2] * (x @ ps[0].T) + ps[1] - y) ** 2).mean()


PROBLEMS = {"quadratic": quadratic, "rosenbrock": rosenbrock, "regression": regression}


def closure_for(optimizer, params, loss_of):
    def closure():
        optimizer.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss
    return closure


def assert_same(ours, theirs, ours_params, theirs_params, tolerance, what):
    """Params and every state of the first param: vectors (lists of them), scalars and counts."""
    for i, (p, q) in enumerate(zip(ours_params, theirs_params)):
        torch.testing.assert_close(p.detach(), q.detach(), **tolerance, msg=lambda m: f"{what}: param {i}: {m}")
    mine, expected = ours.state[ours_params[0]], theirs.state[theirs_params[0]]
    assert set(mine) == set(expected), f"{what}: states {sorted(mine)} != torch's {sorted(expected)}"
    for key, value in expected.items():
        if key in ("func_evals", "n_iter"):
            assert mine[key] == value, f"{what}: {key} {mine[key]} != torch's {value}"
        elif isinstance(value, list):
            assert len(mine[key]) == len(value), f"{what}: {key} holds {len(mine[key])}, torch's {len(value)}"
            for j, (a, b) in enumerate(zip(mine[key], value)):
                if b is None:
                    assert a is None, f"{what}: {key}[{j}] is {a}, torch's None"
                else:
                    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), **tolerance,
                                               msg=lambda m: f"{what}: {key}[{j}]: {m}")
        else:
            torch.testing.assert_close(torch.as_tensor(mine[key]).double(), torch.as_tensor(value).double(),
                                       **tolerance, msg=lambda m: f"{what}: {key}: {m}")


def twins(problem):
    ours_params, loss_of = PROBLEMS[problem]()
    theirs_params, _ = PROBLEMS[problem]()
    return ours_params, theirs_params, loss_of


def step_both(ours, theirs, ours_params, theirs_params, loss_of, tolerance, steps=STEPS, first=1):
    for step in range(first, first + steps):
        ours_loss = ours.step(closure_for(ours, ours_params, loss_of))
        theirs_loss = theirs.step(closure_for(theirs, theirs_params, loss_of))
        torch.testing.assert_close(ours_loss.detach(), theirs_loss.detach(), **tolerance)
        assert_same(ours, theirs, ours_params, theirs_params, tolerance, f"step {step}")


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # torch's float(closure())
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("options", [dict(max_iter=3, history_size=3), dict(max_iter=3, max_eval=9, lr=0.5),
                                     dict(max_iter=4, history_size=2, line_search_fn="strong_wolfe")],
                         ids=["fixed-step-history-3", "fixed-step-to-max-iter", "strong-wolfe-history-2"])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_steps_like_torch(problem, options, impl):
    """A short history (2, 3) fills and drops its oldest pairs within the steps."""
    ours_params, theirs_params, loss_of = twins(problem)
    ours = fo.LBFGS(ours_params, impl=impl, **options)
    theirs = torch.optim.LBFGS(theirs_params, **options)
    assert ours.chosen_impl() == impl
    step_both(ours, theirs, ours_params, theirs_params, loss_of, EXACT if impl == "reference" else FUSED)


INFO = info_of(torch.optim.LBFGS)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=["float32", "complex64"])
@pytest.mark.parametrize("optim_input", optim_inputs(INFO), ids=lambda optim_input: optim_input.desc)
def test_optim_db_input_steps_like_torch(optim_input, dtype, impl):
    """torch's own LBFGS inputs, real and complex (torch steps those as their real and imaginary parts),
    on the regression problem's sizes with a loss that reads every part: quartic, so that six
    iterations stay short of the minimum (on a quadratic of three curvatures L-BFGS lands on it in
    four, and the later pairs of the history are rounding noise)."""
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(shape, dtype=dtype, generator=generator) for shape in ((3, 5), (3,), (1,))]
    target = [torch.randn(v.shape, dtype=dtype, generator=generator) for v in values]
    ours_params = [torch.nn.Parameter(v.clone()) for v in values]
    theirs_params = [torch.nn.Parameter(v.clone()) for v in values]

    def loss_of(params):
        differences = [torch.view_as_real(p - t) if dtype.is_complex else p - t for p, t in zip(params, target)]
        return sum(((x ** 2 + x ** 4) * (k + 1)).sum() for k, x in enumerate(differences))

    ours = fo.LBFGS(ours_params, impl=impl, max_iter=2, **optim_input.kwargs)
    theirs = torch.optim.LBFGS(theirs_params, max_iter=2, **optim_input.kwargs)
    step_both(ours, theirs, ours_params, theirs_params, loss_of, EXACT if impl == "reference" else FUSED)


@pytest.mark.parametrize("error_input", error_inputs(INFO), ids=error_id)
def test_optim_db_error_input_raises_torchs_error(error_input):
    assert_raises_as_torch(error_input, fo.LBFGS, step=lambda optimizer: optimizer.step(lambda: torch.zeros(())))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_state_dict_moves_both_ways(direction, impl):
    """Two steps in one class, its state_dict into a fresh other, then both step on as one."""
    options = dict(max_iter=3, history_size=3, line_search_fn="strong_wolfe")
    ours_params, theirs_params, loss_of = twins("regression")
    ours = fo.LBFGS(ours_params, impl=impl, **options)
    theirs = torch.optim.LBFGS(theirs_params, **options)
    tolerance = EXACT if impl == "reference" else FUSED
    step_both(ours, theirs, ours_params, theirs_params, loss_of, tolerance, steps=2)
    ours, theirs = handed_across(direction, ours, theirs, lambda: fo.LBFGS(ours_params, impl=impl),
                                 lambda: torch.optim.LBFGS(theirs_params))
    step_both(ours, theirs, ours_params, theirs_params, loss_of, tolerance, steps=2, first=3)


def test_exported_as_the_other_classes():
    assert fo.LBFGS is fo.optim.LBFGS is LBFGS and "LBFGS" in fo.__all__
    assert "LBFGS" not in fo.optim.RULES  # no element-wise rule: no registry row
    theirs = inspect.signature(torch.optim.LBFGS).parameters
    ours = inspect.signature(LBFGS).parameters
    assert [(n, p.default) for n, p in theirs.items()] == [(n, p.default) for n, p in ours.items() if n != "impl"]
    assert LBFGS.DEFAULTS == {n: p.default for n, p in theirs.items() if n != "params"}


BAD_ARGUMENTS = [(dict(line_search_fn="armijo"), "line_search_fn='armijo'"), (dict(history_size=0), "history_size=0"),
                 (dict(max_iter=2.5), "max_iter=2.5"), (dict(tolerance_grad=-1.0), "tolerance_grad=-1.0"),
                 (dict(impl="cuda"), "impl='cuda'"), (dict(lr=-0.1), "Invalid learning rate")]


@pytest.mark.parametrize("kwargs, text", BAD_ARGUMENTS, ids=[text for _, text in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_naming_them(kwargs, text):
    with pytest.raises(ValueError, match=text.replace("(", r"\(")):
        fo.LBFGS([torch.nn.Parameter(torch.ones(2))], **kwargs)


@pytest.mark.parametrize("case", ["float64-triton", "no-closure", "setting-a-bad-impl"])
def test_bad_input_at_step_changes_nothing(case):
    """Refused before the closure runs: no param, gradient or state has changed."""
    dtype = torch.float64 if case == "float64-triton" else torch.float32
    params = [torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=dtype))]
    optimizer = fo.LBFGS(params, impl="triton" if case == "float64-triton" else "reference")
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = (params[0] ** 2).sum()
        loss.backward()
        return loss

    if case == "float64-triton":
        with pytest.raises(ValueError, match="param 0 has dtype torch.float64"):
            optimizer.step(closure)
    elif case == "no-closure":
        with pytest.raises(TypeError, match="needs a closure"):
            optimizer.step(None)
    else:
        with pytest.raises(ValueError, match="impl='fused'"):
            optimizer.impl = "fused"
        assert optimizer.impl == "reference"
    assert not calls and not optimizer.state and params[0].grad is None
    torch.testing.assert_close(params[0].detach(), torch.tensor([1.0, -2.0], dtype=dtype))


def test_auto_takes_the_reference_where_the_kernels_cannot_run():
    optimizer = fo.LBFGS([torch.nn.Parameter(torch.ones(2, dtype=torch.float64))])
    assert optimizer.chosen_impl() == "reference"
    transposed = torch.nn.Parameter(torch.ones(3, 2).T)
    assert fo.LBFGS([transposed]).chosen_impl() == "reference"


def _compiled_run(make, compiled, fullgraph=False, problem=None):
    """Three step(closure)s of the regression (three params), through torch.compile(step) or not: the
    losses, the params and the optimizer. torch._dynamo.reset() first: each run compiles from cold."""
    torch._dynamo.reset()
    params, loss_fn = problem or regression()
    optimizer = make(params)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss

    step = torch.compile(optimizer.step, fullgraph=fullgraph, backend="eager") if compiled else optimizer.step
    losses = [step(closure) for _ in range(STEPS)]
    return losses, params, optimizer


# The fixed step: with line_search_fn="strong_wolfe" dynamo's graphs of the search's host arithmetic round
# differently from eager Python, torch's twin's as ours (a loss apart in its last bits at the second step).
TWINS = {"torch": lambda params: torch.optim.LBFGS(params, max_iter=4),
         **{impl: (lambda params, impl=impl: fo.LBFGS(params, max_iter=4, impl=impl)) for impl in IMPLS}}


@pytest.mark.parametrize("impl", IMPLS)
def test_a_compiled_step_breaks_its_graph_and_steps_as_torchs(impl):
    """torch.compile(optimizer.step) of torch's LBFGS and of ours: dynamo breaks the graph at the closure's
    backward and zero_grad, at the host's tolerance checks and (triton) around each launch, which runs
    eagerly (``FusedVectors.update``/``reduce`` are compiler.disable'd: traced, a launch's pointer table
    fails on fake tensors). Compiled, torch's twin and the reference impl round some host arithmetic in
    dynamo's graphs, apart from their eager steps (and each other) in the last bits: all within FUSED,
    the same counts. The fused impl equals its own eager steps bit for bit."""
    runs = {(twin, compiled): _compiled_run(TWINS[twin], compiled) for twin in ("torch", impl)
            for compiled in (False, True)}
    exact = None if impl == "reference" else (impl, False)
    losses, params, optimizer = runs[(impl, True)]
    for (twin, compiled), (other_losses, other_params, other) in runs.items():
        tolerance = EXACT if (twin, compiled) == exact else FUSED
        torch.testing.assert_close(torch.stack(losses), torch.stack(other_losses), **tolerance)
        for p, q in zip(params, other_params):
            torch.testing.assert_close(p.detach(), q.detach(), **tolerance, msg=lambda m: f"{twin}, {compiled}: {m}")
        state, other_state = optimizer.state[params[0]], other.state[other_params[0]]
        assert (state["n_iter"], state["func_evals"]) == (other_state["n_iter"], other_state["func_evals"])


@pytest.mark.parametrize("twin", TWINS)
def test_a_fullgraph_step_is_refused_by_dynamo_before_anything_changes(twin):
    """fullgraph=True cannot hold an L-BFGS step: the closure's backward and zero_grad, and the host's
    reads of the loss and the tolerances, are graph breaks, so dynamo raises Unsupported while tracing
    the first step, torch's twin as ours, and no param or state has changed."""
    params, loss_fn = regression()
    before = [p.detach().clone() for p in params]
    with pytest.raises(torch._dynamo.exc.Unsupported):
        _compiled_run(TWINS[twin], compiled=True, fullgraph=True, problem=(params, loss_fn))
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "a refused compiled step moved a param"
