"""Each rule's own claims from the rule sheet, in both impls (the parity matrix covers the rest)."""
import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.registry import Tolerance
from tests.conftest import DEVICE, assert_close, make_params, random_grads

IMPLS = ("triton", "reference")
EXACT = Tolerance(atol=0.0, rtol=0.0)


def set_grads(params, grads):
    for param, grad in zip(params, grads):
        param.grad = grad


def test_eg_refuses_a_negative_param_by_name():
    params = [torch.rand(3), torch.tensor([0.5, -0.25])]
    with pytest.raises(ValueError, match="EG: param 1 of param group 0 has negative entries"):
        optim.EG(params)


@pytest.mark.parametrize("impl", IMPLS)
def test_eg_keeps_params_non_negative(impl):
    params = make_params([(257,)], torch.float32)
    params = [p.abs() for p in params]
    optimizer = optim.EG(params, lr=0.5, impl=impl)
    for step in range(10):
        set_grads(params, [10 * g for g in random_grads(params, seed=step)])
        optimizer.step()
    assert (params[0] >= 0).all() and (params[0] > 0).any()


@pytest.mark.parametrize("impl", IMPLS)
def test_egstepsize_grows_where_gradients_agree_and_shrinks_where_they_alternate(impl):
    param = torch.zeros(2, device=DEVICE)
    optimizer = optim.EGStepSize([param], lr=1e-2, gamma=0.5, impl=impl)
    for step in range(4):
        param.grad = torch.tensor([1.0, (-1.0) ** step], device=DEVICE)  # agree | alternate
        optimizer.step()
    step_size = optimizer.state[param]["step_size"]
    assert step_size[0] > 1.0 > step_size[1]
    assert step_size[0].item() == pytest.approx(torch.exp(torch.tensor(1.5)).item(), rel=1e-6)  # 3 agreeing pairs


@pytest.mark.parametrize("impl", IMPLS)
def test_egstepsize_bounds_clip_the_step_sizes(impl):
    params = make_params([(1029,), (3, 7, 11)], torch.float32)
    reference_params = make_params([(1029,), (3, 7, 11)], torch.float32)
    optimizer = optim.EGStepSize(params, gamma=2.0, step_size_bounds=(0.5, 2.0), impl=impl)
    reference = optim.EGStepSize(reference_params, gamma=2.0, step_size_bounds=(0.5, 2.0), impl="reference")
    for step in range(6):
        grads = random_grads(params, seed=step)
        set_grads(params, grads)
        set_grads(reference_params, [g.clone() for g in grads])
        optimizer.step()
        reference.step()
    for param, reference_param in zip(params, reference_params):
        step_size = optimizer.state[param]["step_size"]
        assert step_size.min() == 0.5 and step_size.max() == 2.0, "the bounds were never reached or crossed"
        assert_close(step_size, reference.state[reference_param]["step_size"], Tolerance(1e-6, 1e-5), "step_size")
        assert_close(param, reference_param, Tolerance(1e-6, 1e-5), "param")


@pytest.mark.parametrize("impl", IMPLS)
def test_sgdhd_moves_alpha_by_the_hypergradient_on_the_device(impl):
    params = make_params([(1029,), (3, 7, 11)], torch.float32)
    optimizer = optim.SGDHD(params, lr=0.01, hypergrad_lr=1e-3, impl=impl)
    grads = [random_grads(params, seed=step) for step in range(3)]
    expected_alpha, expected = 0.01, [p.clone().double() for p in params]
    for step in range(3):
        set_grads(params, grads[step])
        optimizer.step()
        if step > 0:  # α += β·Σ⟨g, g_prev⟩ over every param of the group
            expected_alpha += 1e-3 * sum((g.double() * h.double()).sum().item() for g, h in zip(grads[step], grads[step - 1]))
        expected = [e - expected_alpha * g.double() for e, g in zip(expected, grads[step])]
    alpha = optimizer.param_groups[0]["lr"]
    assert isinstance(alpha, torch.Tensor) and alpha.device == params[0].device and alpha.dtype == torch.float32
    assert alpha.item() == pytest.approx(expected_alpha, rel=1e-5)
    assert alpha.item() != pytest.approx(0.01, rel=1e-3), "α did not move"
    for param, e in zip(params, expected):
        assert_close(param, e, Tolerance(1e-5, 1e-5), "θ after hypergradient steps")


@pytest.mark.parametrize("impl", IMPLS)
def test_signum_without_momentum_is_signsgd(impl):
    params, signsgd_params = make_params([(1029,)], torch.float32), make_params([(1029,)], torch.float32)
    signum = optim.Signum(params, momentum=0.0, weight_decay=0.1, impl=impl)
    signsgd = optim.SignSGD(signsgd_params, weight_decay=0.1, impl=impl)
    for step in range(5):
        grads = random_grads(params, seed=step)
        set_grads(params, grads)
        set_grads(signsgd_params, [g.clone() for g in grads])
        signum.step()
        signsgd.step()
    assert_close(params[0], signsgd_params[0], EXACT, "Signum(momentum=0) vs SignSGD")


PREV_GRAD_RULES = [rule for rule in optim.RULES.values() if "prev_grad" in rule.state_names(rule.defaults)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule", PREV_GRAD_RULES, ids=[rule.name for rule in PREV_GRAD_RULES])
def test_prev_grad_is_the_gradient_before_the_step_when_it_aliases_its_param(rule, impl):
    """A gradient that shares its param's memory (p.grad = p.detach()) is stored as it was read, before
    θ moved: the kernel reads both into registers first, the oracle must not read g after writing θ."""
    param = make_params([(33,)], torch.float32, rule=rule)[0].abs() + 0.5
    optimizer = getattr(optim, rule.name)([param], impl=impl)
    param.grad = param.detach()
    before = param.detach().clone()
    optimizer.step()
    assert not torch.equal(param, before), f"{rule.name}: the step did not move θ"
    assert_close(optimizer.state[param]["prev_grad"], before, EXACT, f"{rule.name} ({impl}) prev_grad")


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_lion_decoupled_weight_decay_is_relative_to_the_lr_at_construction(impl):
    """lion-pytorch's decoupled_weight_decay, written out: with η₀ the lr given at construction and η_t
    the lr of step t (here changed every step, as a scheduler would),
        θ ← θ(1 − η_t·λ/η₀),  c = β1·m + (1 − β1)·g,  θ ← θ − η_t·sign(c),  m ← β2·m + (1 − β2)·g."""
    lr0, decay, (beta1, beta2) = 1e-2, 0.1, (0.9, 0.99)
    params = make_params([(33,), (4, 5)], torch.float32)
    expected = [p.clone() for p in params]
    momenta = [torch.zeros_like(p) for p in params]
    lion = optim.Lion(params, lr=lr0, weight_decay=decay, decoupled_weight_decay=True, impl=impl)
    for step in range(6):
        lr = lr0 * (1 + step) / 2  # below η₀, then above it
        lion.param_groups[0]["lr"] = lr
        grads = random_grads(params, seed=step)
        for param, grad in zip(params, grads):
            param.grad = grad
        lion.step()
        for theta, m, g in zip(expected, momenta, grads):
            theta.mul_(1 - lr * decay / lr0)
            theta.sub_(lr * torch.sign(beta1 * m + (1 - beta1) * g))
            m.mul_(beta2).add_((1 - beta2) * g)
    for param, theta, m in zip(params, expected, momenta):
        assert_close(param, theta, Tolerance(atol=1e-6, rtol=1e-6), "θ")
        assert_close(lion.state[param]["exp_avg"], m, Tolerance(atol=1e-6, rtol=1e-6), "m")
