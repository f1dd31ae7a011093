"""Tiger against the original's own claims (bojone/tiger's tiger.py, RULES.md), in both impls."""
import pytest
import torch

import optim
from optim.registry import Tolerance
from tests.conftest import assert_close, make_params, random_grads

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
