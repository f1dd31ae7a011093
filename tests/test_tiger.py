"""Tiger against the original's own claims (bojone/tiger's tiger.py, RULES.md), in both impls."""
import copy
import re
import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fusedoptim import optim
from fusedoptim.optim.registry import RULES, Tolerance
from tests.conftest import DEVICE, assert_close, make_params, random_grads

SHAPES = [(513,), (17, 33)]  # one bias-like tensor (lr/2, no decay) and one matrix (lr·RMS(θ))
ACCUMULATION = Tolerance(atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_steps_equal_one_step_on_the_mean_gradient(impl, k):
    accumulated, single = make_params(SHAPES, torch.float32), make_params(SHAPES, torch.float32)
    tiger_k = optim.Tiger(accumulated, grad_accum_steps=k, lr=1e-2, impl=impl)
    tiger_1 = optim.Tiger(single, grad_accum_steps=1, lr=1e-2, impl=impl)
    for step in range(3):
        micro_grads = [random_grads(accumulated, seed=100 * step + i) for i in range(k)]
        for i, grads in enumerate(micro_grads):
            for param, grad in zip(accumulated, grads):
                param.grad = grad
            before = [p.clone() for p in accumulated]
            tiger_k.step()
            if i < k - 1:  # only the last micro-step of a cycle moves θ
                assert all(torch.equal(p, b) for p, b in zip(accumulated, before))
        for param, *grads in zip(single, *micro_grads):
            param.grad = torch.stack(grads).mean(0)
        tiger_1.step()
    for i, (a, b) in enumerate(zip(accumulated, single)):
        assert_close(a, b, ACCUMULATION, f"param {i} after accumulation")
        assert_close(tiger_k.state[a]["m"], tiger_1.state[b]["m"], ACCUMULATION, f"m of param {i}")


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_nan_guard_keeps_m_and_shrinks_theta(impl):
    params = make_params(SHAPES, torch.float32)
    tiger = optim.Tiger(params, impl=impl, shrink_ratio=0.9)
    for param, grad in zip(params, random_grads(params, seed=0)):
        param.grad = grad
    tiger.step()
    before = [p.clone() for p in params]
    m_before = [tiger.state[p]["m"].clone() for p in params]
    grads = random_grads(params, seed=1)
    grads[1][3, 5] = float("nan")
    for param, grad in zip(params, grads):
        param.grad = grad
    tiger.step()
    assert torch.equal(tiger.state[params[1]]["m"], m_before[1]), "m moved although its gradient had a NaN"
    assert_close(params[1], before[1] * 0.9, Tolerance(atol=0, rtol=1e-7), "θ shrunk toward 0")
    assert not torch.equal(params[0], before[0]), "the tensor without NaN was not updated"
    assert not torch.equal(tiger.state[params[0]]["m"], m_before[0])
    assert tiger.state[params[1]]["step"].item() == 2, "the micro-step still counts"


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_per_tensor_learning_rates(impl):
    """A bias moves by exactly lr/2 per step and a matrix by lr·RMS(θ) (here with no decay)."""
    bias, matrix = make_params(SHAPES, torch.float32)
    rms = matrix.pow(2).mean().sqrt()
    start = [bias.clone(), matrix.clone()]
    tiger = optim.Tiger([bias, matrix], lr=1e-2, weight_decay=0.0, impl=impl)
    for param, grad in zip((bias, matrix), random_grads([bias, matrix], seed=0)):
        param.grad = grad
    tiger.step()
    # θ_new − θ carries the rounding of θ_new: one fp32 ulp of |θ| < 4, i.e. below 5e-7.
    step_tolerance = Tolerance(atol=5e-7, rtol=1e-6)
    assert_close((bias - start[0]).abs(), torch.full_like(bias, 5e-3), step_tolerance, "bias step")
    assert_close((matrix - start[1]).abs(), (1e-2 * rms).expand_as(matrix), step_tolerance, "matrix step")


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_embedding_rows_and_normalization_follow_the_original(impl):
    """The original's classes (bojone/tiger's _resource_apply): an embedding row moves by lr·RMS(its
    row), a normalization weight by lr/2 with no decay, and its NaN guard shrinks toward 1."""
    embedding, gamma = make_params([(6, 40), (40,)], torch.float32, seed=3)
    gamma += 1.0  # a normalization weight, initialised around 1
    row_rms = embedding.pow(2).mean(dim=-1, keepdim=True).sqrt()
    start = [embedding.clone(), gamma.clone()]
    tiger = optim.Tiger([{"params": [embedding], "param_kind": "embedding"},
                         {"params": [gamma], "param_kind": "normalization"}], lr=1e-2, weight_decay=0.0, impl=impl)
    for param, grad in zip((embedding, gamma), random_grads([embedding, gamma], seed=0)):
        param.grad = grad
    tiger.step()
    step_tolerance = Tolerance(atol=5e-7, rtol=1e-6)
    assert_close((embedding - start[0]).abs(), (1e-2 * row_rms).expand_as(embedding), step_tolerance, "row step")
    assert_close((gamma - start[1]).abs(), torch.full_like(gamma, 5e-3), step_tolerance, "gamma step")
    before = gamma.clone()
    gamma.grad = torch.full_like(gamma, float("nan"))
    embedding.grad = None
    tiger.step()
    assert_close(gamma, (before - 1) * 0.99 + 1, Tolerance(atol=1e-7, rtol=1e-7), "gamma shrunk toward 1")


def test_param_groups_from_a_model_class_every_tensor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model[4].weight.requires_grad_(False)  # frozen: left out
    groups = optim.tiger_param_groups(model, weight_decay=0.1)
    kinds = {group["param_kind"]: group["params"] for group in groups}
    assert [group["weight_decay"] for group in groups] == [0.1] * 4
    assert kinds["embedding"] == [model[0].weight]
    assert kinds["normalization"] == [model[1].weight, model[3].weight]
    assert kinds["bias"] == [model[1].bias, model[2].bias, model[3].bias, model[4].bias]
    assert kinds["matrix"] == [model[2].weight]


def test_a_model_trains_through_its_helper_groups_in_both_impls_alike():
    """One line of set-up, every class in play, and the two impls agree step by step."""
    runs = []
    for impl in ("triton", "reference"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(11, 8), nn.LayerNorm(8), nn.Flatten(), nn.Linear(24, 2)).to(DEVICE)
        tiger = optim.Tiger(optim.tiger_param_groups(model), lr=1e-2, impl=impl)
        tokens = torch.randint(0, 11, (16, 3), generator=torch.Generator().manual_seed(1)).to(DEVICE)
        for _ in range(5):
            model(tokens).square().mean().backward()
            tiger.step()
            tiger.zero_grad()
        runs.append(list(model.parameters()))
    for a, b in zip(*runs):
        assert_close(a, b, Tolerance(atol=1e-6, rtol=1e-5), f"param {tuple(a.shape)}")


def test_schedule_is_the_originals_piecewise_linear():
    """Values worked out by hand from bojone/tiger's piecewise_linear (from_zero=True)."""
    warm_then_decay = {1000: 1, 2000: 0.1}
    for step, expected in ((0, 0.0), (500, 0.5), (1000, 1.0), (1500, 0.55), (2000, 0.1), (9000, 0.1)):
        assert optim.piecewise_linear(step, warm_then_decay) == pytest.approx(expected, abs=1e-12)
    for step, expected in ((0, 2.0), (5, 1.0), (10, 0.0), (11, 0.0)):
        assert optim.piecewise_linear(step, {0: 2, 10: 0}) == pytest.approx(expected, abs=1e-12)
    assert optim.piecewise_linear(123, {0: 1}) == 1.0  # the original's default: constant


@pytest.mark.parametrize("keys", ["int", "str and float"])
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_schedule_is_evaluated_from_the_device_step_counter(impl, keys):
    """Each step a bias moves by exactly lr/2 · schedule(t), t counted in micro-steps; the kernel's
    arguments never change with t (the step counter is a device tensor), so nothing recompiles. Keys
    as a JSON config or the original's int() gives them ("2", 6.0) name the same steps."""
    schedule = {2: 1.0, 6: 0.5}
    (bias,) = make_params([(300,)], torch.float32)
    given = schedule if keys == "int" else {"2": 1.0, 6.0: 0.5}
    tiger = optim.Tiger([bias], lr=1e-2, lr_schedule=given, impl=impl)
    arguments = RULES["Tiger"].kernel_arguments(tiger.param_groups[0])
    for t in range(9):
        before = bias.clone()
        bias.grad = torch.ones_like(bias)
        tiger.step()
        expected = 1e-2 / 2 * optim.piecewise_linear(t, schedule)
        assert_close((before - bias), torch.full_like(bias, expected), Tolerance(atol=5e-7, rtol=1e-6), f"t={t}")
        assert RULES["Tiger"].kernel_arguments(tiger.param_groups[0]) == arguments


def test_piecewise_linear_lr_drives_any_rule():
    param = torch.zeros(3, requires_grad=True)
    adam = optim.Adam([param], lr=0.1, impl="reference")
    scheduler = optim.PiecewiseLinearLR(adam, {4: 1.0, 8: 0.5})
    seen = []
    for _ in range(10):
        seen.append(adam.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        adam.step()
        scheduler.step()
    expected = [0.1 * optim.piecewise_linear(t, {4: 1.0, 8: 0.5}) for t in range(10)]
    assert seen == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="schedule=.*integer steps >= 0"):
        optim.PiecewiseLinearLR(adam, {-1: 1.0})


def test_schedule_keys_are_read_as_the_originals_int_reads_them():
    """bojone/tiger passes each key through int(): strings of integers and whole floats are steps. A
    fractional step is refused rather than truncated, and two keys naming one step are refused."""
    for given in ({"4": 1, "10": 0.5}, {4.0: 1, 10.0: 0.5}, {" 4": 1, 10.0: 0.5}):
        for step in (0, 2, 4, 7, 10, 12):
            assert optim.piecewise_linear(step, given) == optim.piecewise_linear(step, {4: 1, 10: 0.5}), given
    param = torch.zeros(3, requires_grad=True)
    scheduler = optim.PiecewiseLinearLR(optim.Adam([param], lr=0.1, impl="reference"), {"4": 1})
    assert scheduler.get_last_lr() == [0.0]
    for schedule, message in (({4.5: 1}, "not 4.5; the original would truncate it to 4"), ({"4.5": 1}, "not '4.5'"),
                              ({"4": 1, 4.0: 0.5}, "gives step 4 twice"), ({"-2": 1}, "not '-2'"),
                              ({True: 1}, "not True")):
        with pytest.raises(ValueError, match=f"lr_schedule .*{re.escape(message)}"):
            optim.Tiger([torch.zeros(3)], lr_schedule=schedule)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_nan_guard_acts_on_every_micro_step_and_is_counted_on_the_device(impl):
    params = make_params(SHAPES, torch.float32)
    tiger = optim.Tiger(params, impl=impl, grad_accum_steps=2, shrink_ratio=0.5)
    expected_skips = 0
    for step in range(4):
        grads = random_grads(params, seed=step)
        if step in (1, 2):  # the last micro-step of one cycle and the first of the next
            grads[0][7] = float("nan")
        for param, grad in zip(params, grads):
            param.grad = grad
        before = params[0].clone()
        tiger.step()
        if step in (1, 2):
            expected_skips += 1
            assert_close(params[0], before * 0.5, Tolerance(atol=0, rtol=1e-7), f"micro-step {step} shrinks")
        skips = tiger.counter("nan_skips")
        assert skips.device == params[0].device and skips.item() == expected_skips
    assert tiger.state[params[0]]["nan_skips"].item() == 2 and tiger.state[params[1]]["nan_skips"].item() == 0
    with pytest.raises(ValueError, match="counter\\('skips'\\) is not one of its counters"):
        tiger.counter("skips")


# --- One step counter per optimizer, as the original's `iterations` --------------------------------

ORIGINAL = dict(lr=1e-2, beta=0.965, weight_decay=0.01, grad_accum_steps=3, lr_schedule={3: 1.0, 9: 0.5})


def original_schedule(t):
    """{3: 1, 9: 0.5} from (0, 0), written out: up to 1 at t = 3, down to 0.5 at t = 9, then held."""
    return t / 3 if t < 3 else 1 - 0.5 * (t - 3) / 6 if t < 9 else 0.5


def original_tiger(thetas, micro_steps, lr, beta, weight_decay, grad_accum_steps, lr_schedule):
    """bojone/tiger's _prepare and _resource_apply, in fp64, for biases (ndim 1) and matrices: one t for
    the optimizer (Keras' `iterations`, advanced by every apply_gradients), and a tensor whose gradient
    is None skipped on that micro-step (Keras applies nothing to it). Returns θ and m of every tensor."""
    k = grad_accum_steps
    thetas = [theta.double().clone() for theta in thetas]
    ms = [torch.zeros_like(theta) for theta in thetas]
    for t, grads in enumerate(micro_steps):
        b1 = beta if t % k == 0 else 1.0
        b2 = (1 - beta) / k
        eta = lr * original_schedule(t) if (t + 1) % k == 0 else 0.0
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            theta = thetas[i]
            if theta.ndim == 1:  # 'bias': lr/2, no decay
                step_size, decay = eta * 0.5, 0.0
            else:  # any other weight: lr·RMS(θ), decay
                step_size, decay = eta * theta.pow(2).mean().sqrt(), weight_decay
            ms[i] = b1 * ms[i] + b2 * grad.double()
            thetas[i] = theta - step_size * (torch.sign(ms[i]) + decay * theta)
    return thetas, ms


def micro_steps_with_gaps(params, n, missing):
    """n micro-steps of gradients; tensor i has none on the micro-steps in missing[i]."""
    return [[None if t in missing[i] else grad for i, grad in enumerate(random_grads(params, seed=t))]
            for t in range(n)]


def run(tiger, params, micro_steps):
    for grads in micro_steps:
        for param, grad in zip(params, grads):
            param.grad = grad
        tiger.step()


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_a_tensor_missing_gradients_keeps_the_originals_phase(impl):
    """k = 3 over four cycles with a schedule: the matrix misses micro-steps 1, 5 and 6 (one in each of
    two cycles, and a cycle's last), the bias 3 and 8; each still moves on t = 2, 5, 8, 11 with the η
    and b1 of the optimizer's t. A counter per tensor would put the matrix two micro-steps behind."""
    params = make_params([(37,), (5, 9)], torch.float32)
    micro_steps = micro_steps_with_gaps(params, 12, missing=[{3, 8}, {1, 5, 6}])
    expected_thetas, expected_ms = original_tiger(params, micro_steps, **ORIGINAL)
    tiger = optim.Tiger(params, **ORIGINAL, impl=impl)
    run(tiger, params, micro_steps)
    for i, (param, theta, m) in enumerate(zip(params, expected_thetas, expected_ms)):
        assert_close(param, theta, Tolerance(atol=1e-6, rtol=1e-5), f"θ of tensor {i}")
        assert_close(tiger.state[param]["m"], m, Tolerance(atol=1e-7, rtol=1e-5), f"m of tensor {i}")
    assert tiger.state[params[0]]["step"] is tiger.state[params[1]]["step"], "one counter for the optimizer"
    assert tiger.state[params[0]]["step"].item() == 12


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_a_param_added_later_joins_the_optimizers_phase(impl):
    """add_param_group after four micro-steps: the new tensor's first micro-step is t = 4 (b1 = 1, no
    move), as if it had been in the optimizer from the start without gradients."""
    params = make_params([(37,), (5, 9)], torch.float32)
    micro_steps = micro_steps_with_gaps(params, 9, missing=[set(), {0, 1, 2, 3}])
    expected_thetas, expected_ms = original_tiger(params, micro_steps, **ORIGINAL)
    tiger = optim.Tiger(params[:1], **ORIGINAL, impl=impl)
    run(tiger, params[:1], [grads[:1] for grads in micro_steps[:4]])
    tiger.add_param_group({"params": [params[1]]})
    run(tiger, params, micro_steps[4:])
    for i, (param, theta, m) in enumerate(zip(params, expected_thetas, expected_ms)):
        assert_close(param, theta, Tolerance(atol=1e-6, rtol=1e-5), f"θ of tensor {i}")
        assert_close(tiger.state[param]["m"], m, Tolerance(atol=1e-7, rtol=1e-5), f"m of tensor {i}")


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_a_checkpoint_carries_the_counter(impl):
    """Saved after four micro-steps in which the matrix had a gradient once: the loaded optimizer is at
    micro-step 4 for both tensors and runs on bit for bit like the one that saved it."""
    params = make_params([(37,), (5, 9)], torch.float32)
    micro_steps = micro_steps_with_gaps(params, 9, missing=[set(), {1, 2, 3}])
    tiger = optim.Tiger(params, **ORIGINAL, impl=impl)
    run(tiger, params, micro_steps[:4])
    checkpoint = copy.deepcopy((tiger.state_dict(), [p.detach().clone() for p in params]))
    run(tiger, params, micro_steps[4:])

    state_dict, resumed_params = checkpoint
    resumed = optim.Tiger(resumed_params, **ORIGINAL, impl=impl)
    resumed.load_state_dict(state_dict)
    steps = [resumed.state[p]["step"] for p in resumed_params]
    assert steps[0] is steps[1] and steps[0].item() == 4
    run(resumed, resumed_params, micro_steps[4:])
    for i, (a, b) in enumerate(zip(resumed_params, params)):
        assert torch.equal(a, b), f"θ of tensor {i}"
        assert torch.equal(resumed.state[a]["m"], tiger.state[b]["m"]), f"m of tensor {i}"


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_an_older_checkpoint_with_steps_per_param_loads_the_largest_with_a_warning(impl):
    """Before the counter, the matrix that missed three micro-steps saved step 1 and the bias step 4:
    the load takes 4, says so, and runs on as the optimizer that counted once per optimizer. A load that
    raises (here that warning, as an error) changes nothing."""
    params = make_params([(37,), (5, 9)], torch.float32)
    micro_steps = micro_steps_with_gaps(params, 9, missing=[set(), {1, 2, 3}])
    tiger = optim.Tiger(params, **ORIGINAL, impl=impl)
    run(tiger, params, micro_steps[:4])
    state_dict = copy.deepcopy(tiger.state_dict())
    state_dict["state"][1]["step"] = torch.tensor(1.0)  # as the per-param counter left it
    saved_params = [p.detach().clone() for p in params]
    run(tiger, params, micro_steps[4:])

    resumed_params = [p.clone() for p in saved_params]
    resumed = optim.Tiger(resumed_params, **ORIGINAL, impl=impl)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            resumed.load_state_dict(state_dict)
    assert len(resumed.state) == 0 and all(c.item() == 0 for c in resumed.runtime.step_counters()), \
        "a load that raised changed the optimizer"
    with pytest.warns(UserWarning, match="different steps \\(1 to 4\\).*loaded the largest, 4"):
        resumed.load_state_dict(state_dict)
    steps = [resumed.state[p]["step"] for p in resumed_params]
    assert steps[0] is steps[1] and steps[0].item() == 4
    run(resumed, resumed_params, micro_steps[4:])
    for i, (a, b) in enumerate(zip(resumed_params, params)):
        assert torch.equal(a, b), f"θ of tensor {i}"
        assert torch.equal(resumed.state[a]["m"], tiger.state[b]["m"]), f"m of tensor {i}"


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "reentrant checkpoint"])
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_gradient_release_counts_each_backward_once_and_keeps_the_phase(impl, checkpointed):
    """k = 3, six backwards; the second layer is left out of backwards 1 and 3 (its hook never fires):
    each backward counts one micro-step however many hooks fire, so the run equals step() after each
    micro-batch bit for bit (the run test_a_tensor_missing_gradients_keeps_the_originals_phase holds to
    the original's equations). A reentrant activation checkpoint of the second layer runs its backward
    inside the outer one, which ends after it: still one micro-step."""
    runs = []
    for release in (False, True):
        torch.manual_seed(0)
        first, second = nn.Linear(6, 6).to(DEVICE), nn.Linear(6, 2).to(DEVICE)
        params = [*first.parameters(), *second.parameters()]
        tiger = optim.Tiger(params, **ORIGINAL, impl=impl, gradient_release=release)
        for t in range(6):
            inputs = torch.randn(4, 6, generator=torch.Generator().manual_seed(t)).to(DEVICE)
            hidden = first(inputs)
            output = checkpoint(second, hidden, use_reentrant=True) if checkpointed else second(hidden)
            (hidden if t in (1, 3) else output).square().mean().backward()
            if not release:
                tiger.step()
                tiger.zero_grad()
        assert tiger.state[params[0]]["step"].item() == 6
        runs.append((params, tiger))
    (kept, kept_tiger), (released, released_tiger) = runs
    for i, (a, b) in enumerate(zip(kept, released)):
        assert torch.equal(a, b), f"θ of param {i}"
        assert torch.equal(kept_tiger.state[a]["m"], released_tiger.state[b]["m"]), f"m of param {i}"
