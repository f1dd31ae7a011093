"""GradScaler with every rule: gradients unscaled in the step, and a step with an inf skipped whole.

The loss scale is a power of two, so scaling and unscaling are exact: a scaled run must equal the
unscaled one bit for bit, and a skipped step must leave params and every state (step counters,
Tiger's NaN-skip counter, SGDHD's learned lr) exactly as they were.
"""

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from tests.conftest import DEVICE, hyperparameters_for_tests, make_params, random_grads

SHAPES = [(1023,), (3, 7, 5), (1,)]
SCALE = 2.0**10


def grad_scaler():
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=SCALE, growth_interval=1000)
    scaler.scale(torch.ones((), device=DEVICE))  # what scaler.scale(loss) does first: make the scale tensor
    return scaler


def hyper(rule):
    return hyperparameters_for_tests(rule)


def snapshot(optimizer, params):
    """Every param, every state tensor and every tensor-valued group entry (SGDHD's α), copied."""
    tensors = [p.detach().clone() for p in params]
    tensors += [value.clone() for p in params for value in optimizer.state[p].values()]
    tensors += [value.clone() for group in optimizer.param_groups for value in group.values()
                if isinstance(value, torch.Tensor)]
    return tensors


def assert_identical(actual, expected, what):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.equal(a, e), f"{what}: tensor {i} differs (max |Δ| {(a.float() - e.float()).abs().max()})"


# fp32 params, bf16 params with split master weights of each width (the residual is a state: a skipped
# step leaves it, and θ, untouched), and quantized states (codes, scales and their draw counter untouched).
PRECISIONS = {"fp32": (torch.float32, {}), "bf16-master-32": (torch.bfloat16, {"master_weight_bits": 32}),
              "bf16-master-24": (torch.bfloat16, {"master_weight_bits": 24}),
              "int8": (torch.float32, {"state_dtype": "int8"}), "int4": (torch.float32, {"state_dtype": "int4"})}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("impl", ["triton", "reference"])
# It writes an inf into a dense gradient: the rules that take dense gradients.
@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if not rule.only_sparse_gradients],
                         ids=lambda rule: rule.name)
def test_grad_scaler_unscales_exactly_and_skips_an_overflow_step_whole(rule, impl, precision):
    dtype, options = PRECISIONS[precision]
    steps = [random_grads(make_params(SHAPES, dtype, rule=rule), seed) for seed in range(3)]
    plain_params = make_params(SHAPES, dtype, rule=rule)
    plain = getattr(optim, rule.name)(plain_params, **hyper(rule), impl=impl, **options)
    for grads in steps:
        for p, g in zip(plain_params, grads):
            p.grad = g.clone()
        plain.step()

    params = make_params(SHAPES, dtype, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyper(rule), impl=impl, **options)
    scaler = grad_scaler()
    for index, grads in enumerate(steps):
        if index == 1:  # an overflow between two real steps: nothing may change
            before = snapshot(optimizer, params)
            for p, g in zip(params, grads):
                p.grad = g * SCALE
            params[1].grad.view(-1)[4] = float("inf")
            scaler.step(optimizer)
            scaler.update()
            assert_identical(snapshot(optimizer, params), before, f"{rule.name} ({impl}) after a skipped step")
            assert scaler.get_scale() == SCALE / 2
        for p, g in zip(params, grads):
            p.grad = g * scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
    assert_identical(snapshot(optimizer, params), snapshot(plain, plain_params),
                     f"{rule.name} ({impl}) with GradScaler against the unscaled run")


def test_a_skipped_first_step_makes_no_momentum_buffer():
    """SGD's buffer is made by its first step: a skipped first step must not leave one (unwritten)."""
    params = make_params(SHAPES, torch.float32)
    optimizer = optim.SGD(params, lr=0.1, momentum=0.9, impl="triton")
    scaler = grad_scaler()
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    scaler.step(optimizer)
    assert all("momentum_buffer" not in optimizer.state[p] for p in params)
    grads = random_grads(params, 0)
    for p, g in zip(params, grads):
        p.grad = g * scaler.get_scale()
    scaler.update()
    for p, g in zip(params, grads):
        p.grad = g * scaler.get_scale()
    scaler.step(optimizer)
    for p, g in zip(params, grads):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], g)


def test_gradient_release_refuses_a_grad_scaler():
    params = [p.requires_grad_() for p in make_params(SHAPES, torch.float32)]
    tiger = optim.Tiger(params, gradient_release=True)
    tiger.grad_scale, tiger.found_inf = torch.ones(()), torch.zeros(())
    with pytest.raises(RuntimeError, match="GradScaler"):
        tiger.step()


@pytest.mark.parametrize("rule", [RULES["AdamW"], RULES["SGDHD"]], ids=lambda rule: rule.name)
def test_a_compiled_step_under_grad_scaler_unscales_and_skips_as_the_eager_one(rule):
    """torch.compile(optimizer.step) as scaler.step calls it: the graph's op must be handed GradScaler's
    inv_scale and found_inf, or a step with an inf gradient moves the params (and every other one
    steps with gradients SCALE times too large). The eager run is the expected one, exactly."""
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        params = make_params(SHAPES, torch.float32, rule=rule)
        optimizer = getattr(optim, rule.name)(params, **hyper(rule), impl="triton")
        if compiled:
            optimizer.step = torch.compile(optimizer.step, fullgraph=True, backend="eager")
        scaler = grad_scaler()
        for index, grads in enumerate(random_grads(params, seed) for seed in range(3)):
            before = snapshot(optimizer, params)
            for p, g in zip(params, grads):
                p.grad = g * scaler.get_scale()
            if index == 1:
                params[1].grad.view(-1)[4] = float("inf")
            scaler.step(optimizer)
            scaler.update()
            if index == 1:
                assert_identical(snapshot(optimizer, params), before, f"{rule.name} compiled={compiled}: skipped step")
        runs.append(snapshot(optimizer, params))
    assert_identical(runs[1], runs[0], f"{rule.name}: compiled step under GradScaler against the eager one")
