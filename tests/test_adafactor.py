"""fo.Adafactor against torch.optim.Adafactor (its for-loop, foreach=False): params and every state after
each of several steps, on params of odd sizes (a 17×33 matrix, a 3×7×5 stack, a 33-vector, a
1-element vector, a 0-d scalar), every option, both impls (triton under the interpreter); torch's
optim_db inputs and error inputs; state_dicts both ways; bad input refused before any change; the step
under torch.compile (one compilation from a cold start, equal to eager bit for bit).

The reference is torch's loop, op for op: it must match bit for bit. The fused impl sums Σθ², Σg² and
Σu² in another order (per block, then per program) and forms V̂ as (R/mean R)·C: fp32 rounding apart,
so it compares at torch's default fp32 tolerances. Five steps: the first sets the statistics to G²
(weight 1), the next ones take both lerp branches (t^-0.8 ≥ 0.5 at t = 2, below from t = 3).
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import fusedoptim as fo
from tests.optim_db import (DIRECTIONS, assert_raises_as_torch, error_id, error_inputs, handed_across, info_of,
                            optim_inputs)

IMPLS = ("reference", "triton")
STEPS = 5
SHAPES = [(17, 33), (3, 7, 5), (33,), (1,), ()]
EXACT = dict(rtol=0, atol=0)
TOLERANCES = {"reference": EXACT, "triton": {}}  # {}: torch's default fp32 tolerances
OPTIONS = {
    "default": {},
    "weight-decay": dict(weight_decay=0.1, lr=0.02),
    "maximize": dict(maximize=True, weight_decay=0.05),
    "clipping-d": dict(d=1.5),
    # ε₁² = 0.09 floors the variance of the gradients under 0.3 (a quarter of N(0, 1)'s), ε₂ = 1.5 is over RMS(θ)
    "eps-pair": dict(eps=(0.3, 1.5)),
    "beta2-decay": dict(beta2_decay=-0.5),
    "lr-tensor": dict(lr=torch.tensor(0.05)),
    "clipped": dict(d=1.0, lr=0.3),  # RMS(U) > d: the clipping divides
}


def twins(shapes=SHAPES, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    values = [scale * torch.randn(shape, generator=generator) for shape in shapes]
    return ([torch.nn.Parameter(v.clone()) for v in values], [torch.nn.Parameter(v.clone()) for v in values],
            generator)


def step_both(ours, theirs, ours_params, theirs_params, generator, steps):
    for step in range(1, steps + 1):
        for p, q in zip(ours_params, theirs_params):
            grad = torch.randn(p.shape, generator=generator)
            p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        yield step


def assert_same(ours, theirs, ours_params, theirs_params, what, tolerance):
    for i, (p, q) in enumerate(zip(ours_params, theirs_params)):
        torch.testing.assert_close(p.detach(), q.detach(), **tolerance, msg=lambda m: f"{what}: param {i}: {m}")
        assert set(ours.state[p]) == set(theirs.state[q]), f"{what}: param {i}: {set(ours.state[p])}"
        for key, value in theirs.state[q].items():
            torch.testing.assert_close(ours.state[p][key], value, **tolerance,
                                       msg=lambda m: f"{what}: param {i} state {key!r}: {m}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("option", OPTIONS)
def test_steps_like_torch(option, impl):
    ours_params, theirs_params, generator = twins()
    ours = fo.Adafactor(ours_params, impl=impl, **OPTIONS[option])
    theirs = torch.optim.Adafactor(theirs_params, foreach=False, **OPTIONS[option])
    assert ours.chosen_impl(ours_params) == impl
    for step in step_both(ours, theirs, ours_params, theirs_params, generator, STEPS):
        assert_same(ours, theirs, ours_params, theirs_params, f"{option} step {step}", TOLERANCES[impl])


def test_state_is_factored_in_o_of_n_plus_m():
    params, _, generator = twins()
    optimizer = fo.Adafactor(params, impl="triton")
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    shapes = {tuple(p.shape): {k: tuple(v.shape) for k, v in optimizer.state[p].items()} for p in params}
    assert shapes[(17, 33)] == {"step": (), "row_var": (17, 1), "col_var": (1, 33)}
    assert shapes[(3, 7, 5)] == {"step": (), "row_var": (3, 7, 1), "col_var": (3, 1, 5)}
    assert shapes[(33,)] == {"step": (), "variance": (33,)}


@pytest.mark.parametrize("impl", IMPLS)
def test_param_groups_and_params_without_gradients(impl):
    """Two groups with their own options; a param without a gradient keeps no state and does not move."""
    ours_params, theirs_params, generator = twins()
    groups = lambda ps: [dict(params=ps[:2], weight_decay=0.1), dict(params=ps[2:], d=2.0, maximize=True)]
    ours, theirs = fo.Adafactor(groups(ours_params), impl=impl), torch.optim.Adafactor(groups(theirs_params))
    for _ in step_both(ours, theirs, ours_params, theirs_params, generator, 2):
        pass
    ours_params[3].grad = theirs_params[3].grad = None
    ours.step()
    theirs.step()
    assert_same(ours, theirs, ours_params, theirs_params, "after a step without param 3's gradient",
                TOLERANCES[impl])


INFO = info_of(torch.optim.Adafactor)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("optim_input", optim_inputs(INFO), ids=lambda o: o.desc)
def test_optim_db_inputs_step_like_torch(optim_input, impl):
    kwargs = {k: v for k, v in optim_input.kwargs.items() if k != "foreach"}
    ours_params, theirs_params, generator = twins([(7,), (3, 5), (1,)])  # tests/test_torch_optim_db.py's shapes
    ours = fo.Adafactor(ours_params, impl=impl, **kwargs)
    theirs = torch.optim.Adafactor(theirs_params, foreach=False, **kwargs)
    for step in step_both(ours, theirs, ours_params, theirs_params, generator, 7):  # torch's own step count
        assert_same(ours, theirs, ours_params, theirs_params, f"{optim_input.desc} step {step}", TOLERANCES[impl])


@pytest.mark.parametrize("error_input", error_inputs(INFO), ids=error_id)
def test_optim_db_error_input_raises_torchs_error(error_input):
    assert_raises_as_torch(error_input, fo.Adafactor)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_state_dict_loads_both_ways(direction, impl):
    """Three steps, a state_dict handed across, three more: the receiver steps as the sender would have."""
    ours_params, theirs_params, generator = twins()
    options = dict(weight_decay=0.1, d=1.5)
    ours, theirs = fo.Adafactor(ours_params, impl=impl, **options), torch.optim.Adafactor(theirs_params, **options)
    for _ in step_both(ours, theirs, ours_params, theirs_params, generator, 3):
        pass
    ours, theirs = handed_across(direction, ours, theirs, lambda: fo.Adafactor(ours_params, impl=impl),
                                 lambda: torch.optim.Adafactor(theirs_params))
    for step in step_both(ours, theirs, ours_params, theirs_params, generator, 3):
        assert_same(ours, theirs, ours_params, theirs_params, f"{direction} step {step + 3}", TOLERANCES[impl])


def snapshot(params, optimizer):
    return [p.detach().clone() for p in params], {id(p): {k: v.clone() for k, v in s.items()}
                                                  for p, s in optimizer.state.items()}


def float64_param(optimizer, params):
    optimizer.impl = "triton"
    params[0].data, params[0].grad = params[0].data.double(), params[0].grad.double()


def transposed_gradient(optimizer, params):
    optimizer.impl = "triton"
    params[1].grad = params[1].grad.mT.contiguous().mT


def complex_param(optimizer, params):
    extra = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))
    extra.grad = torch.randn_like(extra)
    optimizer.add_param_group(dict(params=[extra]))  # a second group: the first must not move either


@pytest.mark.parametrize("spoil, error, text", [
    (float64_param, ValueError, "param 0 has dtype torch.float64"),
    (transposed_gradient, ValueError, "the gradient of param 1 is not contiguous"),
    (complex_param, RuntimeError, "does not support complex parameters"),
])
def test_bad_input_refused_before_any_change(spoil, error, text):
    """A step that cannot run, after one that did, leaves every param and state as they were."""
    params, _, generator = twins([(3,), (4, 6)])
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer = fo.Adafactor(params, impl="reference")
    optimizer.step()
    spoil(optimizer, params)
    before = snapshot(params, optimizer)
    with pytest.raises(error, match=text):
        optimizer.step()
    after = snapshot(params, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert before[1].keys() == after[1].keys() and all(
        torch.equal(before[1][k][name], after[1][k][name]) for k in before[1] for name in before[1][k])


@pytest.mark.parametrize("kwargs, text", [
    (dict(lr=-1.0), "Learning rate should be >= 0"),
    (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
    (dict(eps=1e-3), "eps=0.001 must be a pair"),
    (dict(eps=(None, -1.0)), "epsilon2 should be >= 0"),
    (dict(weight_decay=-0.1), "weight_decay should be >= 0"),
    (dict(impl="cuda"), "impl='cuda' is not one of"),
    (dict(foreach="yes"), "foreach='yes' must be None, True or False"),
])
def test_bad_arguments_refused_at_construction(kwargs, text):
    with pytest.raises(ValueError, match=text):
        fo.Adafactor([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_auto_takes_the_reference_where_the_kernels_cannot_run():
    params = [torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64))]
    params[0].grad = torch.randn(4, 5, dtype=torch.float64)
    optimizer = fo.Adafactor(params)
    assert optimizer.chosen_impl(params) == "reference"
    optimizer.step()
    assert optimizer.state[params[0]]["row_var"].dtype == torch.float64  # torch's state, in the param's dtype


@pytest.mark.parametrize("impl", IMPLS)
def test_grad_scaler_unscales_and_skips_a_step_with_an_inf_as_torch(impl):
    """scaler.scale(loss).backward(); scaler.step(optimizer); scaler.update() on both twins, an inf in one
    gradient at the second of four steps. torch's Adafactor leaves amp to GradScaler (no
    ``_step_supports_amp_scaling``): unscale_ divides the gradients by the scale, and step is not called
    when one holds an inf; ours the same. The skipped step leaves every param and state (step included)
    bit for bit as it was and halves both scales; every step equals torch's. The scale is a power of two,
    so unscaling is exact: an unscaled gradient would show in the statistics, 2^20 times too large."""
    ours_params, theirs_params, generator = twins()
    ours, theirs = fo.Adafactor(ours_params, impl=impl), torch.optim.Adafactor(theirs_params, foreach=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000) for _ in range(2)]
    for step in range(4):
        targets = [torch.randn(p.shape, generator=generator) for p in ours_params]
        before = snapshot(ours_params, ours)
        for optimizer, params, scaler in zip((ours, theirs), (ours_params, theirs_params), scalers):
            optimizer.zero_grad()
            loss = sum((p * t).sum() for p, t in zip(params, targets))  # ∇ = the targets
            if step == 1:
                loss = loss + params[1].sum() * torch.tensor(float("inf"))  # an inf gradient of the stack
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if step == 1:
            after = snapshot(ours_params, ours)
            assert all(torch.equal(a, b) for a, b in zip(before[0], after[0])), "a skipped step moved a param"
            assert before[1].keys() == after[1].keys() and all(
                torch.equal(before[1][k][name], after[1][k][name]) for k in before[1] for name in before[1][k]), \
                "a skipped step changed a state"
            assert [s.get_scale() for s in scalers] == [2.0**9] * 2
        assert_same(ours, theirs, ours_params, theirs_params, f"GradScaler step {step + 1}", TOLERANCES[impl])
    assert ours.state[ours_params[0]]["step"].item() == 3, "the skipped step was counted"


HALF_ULPS = 8  # measured worst 4 (fp16, maximize): torch rounds each op of its step to the dtype, 5 steps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("option", ["default", "weight-decay", "maximize", "clipped"])
def test_half_precision_params_step_like_torch(option, dtype):
    """bf16 and fp16 params: torch keeps the statistics and the variance in the param's dtype and
    rounds every op of its step to it; the kernels compute the step in fp32 (the statistics' sums too)
    and round each state and θ once to the param's dtype, keeping every state in it as torch does. So
    each param and state differs from torch's by a few of the dtype's ulps of its largest value
    (elementwise tolerances fail on elements near 0, which inherit the rounding of their neighbours'
    sums); ``HALF_ULPS`` of them after each of five steps."""
    ours_params, theirs_params, generator = twins()
    for p, q in zip(ours_params, theirs_params):
        p.data, q.data = p.data.to(dtype), q.data.to(dtype)
    ours = fo.Adafactor(ours_params, impl="triton", **OPTIONS[option])
    theirs = torch.optim.Adafactor(theirs_params, foreach=False, **OPTIONS[option])
    assert fo.Adafactor(ours_params).chosen_impl(ours_params) == "triton", "impl='auto' must take the kernels"
    ulp = torch.finfo(dtype).eps
    for step in range(1, STEPS + 1):
        for p, q in zip(ours_params, theirs_params):
            p.grad = torch.randn(p.shape, generator=generator).to(dtype)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
        for i, (p, q) in enumerate(zip(ours_params, theirs_params)):
            assert set(ours.state[p]) == set(theirs.state[q])
            for name, (a, b) in {"param": (p.detach(), q.detach()),
                                 **{k: (ours.state[p][k], v) for k, v in theirs.state[q].items()}}.items():
                assert a.dtype == b.dtype, f"{dtype} {option} step {step}: param {i} {name} is {a.dtype}"
                worst = (a.double() - b.double()).abs().max().item()
                assert worst <= HALF_ULPS * ulp * b.double().abs().max().item(), \
                    f"{dtype} {option} step {step}: param {i} {name}: |ours − torch's| = {worst:.3e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lr", ["tensor", "float"])
def test_compiled_step_is_one_graph_and_never_recompiles_as_the_lr_changes(lr, impl):
    """torch.compile(optimizer.step, fullgraph=True) from a cold start (the state made inside the project's
    opaque step op), the lr changed before each of STEPS steps (a tensor by fill_, or a float): one
    compilation, and params and every state equal the eager steps' bit for bit (the op runs the eager
    step). Each lr is below 1/√t, so ρ_t = min(lr, 1/√t) takes it: a stale lr would show."""
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        params, _, generator = twins()
        optimizer = fo.Adafactor(params, lr=torch.tensor(0.05) if lr == "tensor" else 0.05, weight_decay=0.1,
                                 impl=impl)
        counter = CompileCounter()
        step = torch.compile(optimizer.step, fullgraph=True, backend=counter) if compiled else optimizer.step
        for index in range(STEPS):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            if lr == "tensor":
                optimizer.param_groups[0]["lr"].fill_(0.05 / (1 + index))
            else:
                optimizer.param_groups[0]["lr"] = 0.05 / (1 + index)
            step()
        runs.append((params, optimizer, counter))
    (eager_params, eager, _), (params, optimizer, counter) = runs
    assert counter.frame_count == 1, f"{counter.frame_count} compilations over {STEPS} steps"
    assert_same(optimizer, eager, params, eager_params, "compiled against eager", EXACT)
