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


# --- the first steps in closed form -------------------------------------------------------------
# The rules with no torch twin and no peer library (EG, EGStepSize; Signum and SignSGD, whose peer
# comparison is skipped where pytorch-optimizer is not installed), their first three steps written out
# in fp64 from the paper's equations, independently of the reference: the parity matrix only says that
# the kernel equals the reference, never that the reference is the rule. (SGDHD's:
# test_sgdhd_moves_alpha_by_the_hypergradient_on_the_device above.) fp32 math against fp64: 1e-6.
CLOSED_FORM = Tolerance(atol=1e-6, rtol=1e-6)
CLOSED_FORM_STEPS = 3


def closed_form_run(name, impl, hyperparameters, nonnegative=False):
    """The params after each of 3 steps of random gradients, the optimizer, and the fp64 start and grads."""
    params = make_params([(37,), (3, 5)], torch.float32)
    params = [p.abs() + 0.1 for p in params] if nonnegative else params
    start = [p.double() for p in params]
    optimizer = getattr(optim, name)(params, impl=impl, **hyperparameters)
    grads = [random_grads(params, seed=step) for step in range(CLOSED_FORM_STEPS)]
    for step_grads in grads:
        set_grads(params, step_grads)
        optimizer.step()
    return params, optimizer, start, [[g.double() for g in step_grads] for step_grads in grads]


@pytest.mark.parametrize("impl", IMPLS)
def test_eg_first_steps_in_closed_form(impl):
    """θ_t = θ_0·exp(−η·Σ_{s≤t} g_s): the product of the steps' factors."""
    lr = 0.3
    params, _, start, grads = closed_form_run("EG", impl, dict(lr=lr), nonnegative=True)
    for i, (param, theta) in enumerate(zip(params, start)):
        expected = theta * torch.exp(-lr * sum(step_grads[i] for step_grads in grads))
        assert_close(param, expected, CLOSED_FORM, f"EG ({impl}) θ_3 of param {i}")


@pytest.mark.parametrize("bounds", [None, (0.9, 1.05)])
@pytest.mark.parametrize("impl", IMPLS)
def test_egstepsize_first_steps_in_closed_form(impl, bounds):
    """ν_1 = clip(exp(γ·0·g_1)) = 1 (g_prev starts at 0), ν_2 = clip(exp(γ·g_1·g_2)),
    ν_3 = clip(ν_2·exp(γ·g_2·g_3)); θ_t = θ_{t−1} − η·ν_t·g_t; g_prev = g_3. The bounds (0.9, 1.05)
    with γ = 0.5 are crossed by some coordinates and not others."""
    lr, gamma = 0.1, 0.5
    params, optimizer, start, grads = closed_form_run(
        "EGStepSize", impl, dict(lr=lr, gamma=gamma, step_size_bounds=bounds))
    clip = (lambda v: v) if bounds is None else (lambda v: v.clamp(*bounds))
    for i, (param, theta) in enumerate(zip(params, start)):
        g1, g2, g3 = (step_grads[i] for step_grads in grads)
        nu1 = clip(torch.ones_like(theta))
        nu2 = clip(nu1 * torch.exp(gamma * g1 * g2))
        nu3 = clip(nu2 * torch.exp(gamma * g2 * g3))
        expected = theta - lr * nu1 * g1 - lr * nu2 * g2 - lr * nu3 * g3
        assert_close(param, expected, CLOSED_FORM, f"EGStepSize ({impl}, bounds {bounds}) θ_3 of param {i}")
        assert_close(optimizer.state[param]["step_size"], nu3, CLOSED_FORM, f"EGStepSize ({impl}) ν_3 of param {i}")
        assert_close(optimizer.state[param]["prev_grad"], g3, EXACT, f"EGStepSize ({impl}) g_prev of param {i}")


@pytest.mark.parametrize("impl", IMPLS)
def test_signum_first_steps_in_closed_form(impl):
    """m_1 = (1 − β)g_1, m_2 = β(1 − β)g_1 + (1 − β)g_2, m_3 = β²(1 − β)g_1 + β(1 − β)g_2 + (1 − β)g_3;
    θ_t = θ_{t−1}(1 − ηλ) − η·sign(m_t) (decoupled decay, before the sign step)."""
    lr, beta, decay = 0.01, 0.8, 0.5
    params, optimizer, start, grads = closed_form_run("Signum", impl, dict(lr=lr, momentum=beta, weight_decay=decay))
    for i, (param, theta) in enumerate(zip(params, start)):
        g1, g2, g3 = (step_grads[i] for step_grads in grads)
        m1 = (1 - beta) * g1
        m2 = beta * (1 - beta) * g1 + (1 - beta) * g2
        m3 = beta**2 * (1 - beta) * g1 + beta * (1 - beta) * g2 + (1 - beta) * g3
        for m in (m1, m2, m3):
            theta = theta * (1 - lr * decay) - lr * torch.sign(m)
        assert_close(param, theta, CLOSED_FORM, f"Signum ({impl}) θ_3 of param {i}")
        assert_close(optimizer.state[param]["exp_avg"], m3, CLOSED_FORM, f"Signum ({impl}) m_3 of param {i}")


@pytest.mark.parametrize("impl", IMPLS)
def test_signsgd_first_steps_in_closed_form(impl):
    """θ_3 = θ_0(1 − ηλ)³ − η·Σ_t (1 − ηλ)^{3−t}·sign(g_t)."""
    lr, decay = 0.01, 0.5
    params, _, start, grads = closed_form_run("SignSGD", impl, dict(lr=lr, weight_decay=decay))
    keep = 1 - lr * decay
    for i, (param, theta) in enumerate(zip(params, start)):
        expected = theta * keep**3 - lr * sum(keep ** (3 - t) * torch.sign(step_grads[i])
                                              for t, step_grads in enumerate(grads, start=1))
        assert_close(param, expected, CLOSED_FORM, f"SignSGD ({impl}) θ_3 of param {i}")
