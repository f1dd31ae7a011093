"""Peer libraries agree with ours over 20 steps, in both impls: lion-pytorch's Lion; pytorch-optimizer's
Lion, SignSGD (momentum 0: our SignSGD; momentum > 0: our Signum), AdaDelta and Tiger; heavyball's AdamW
and SGD. The same gradients go to both; every param, and every state whose peer name maps onto ours, is
compared after every step with the tolerances of our registry row (kernel against reference, both fp32:
the peers differ from ours by the order of fp32 operations, e.g. torch.lerp for β·m + (1 − β)·g, and
heavyball's AdamW by where ε goes, below rounding here).
Twenty steps, as the torch.optim twins: long enough for a state's recurrence to carry a wrong coefficient
far beyond rounding. Shapes are odd sizes, each under 10^4 elements, so no sign rule may flip an element
(Rule.sign_flip_fraction excuses none there).

The peers are pinned in ./dev, which installs them with ``pip install --no-deps`` (their dependencies
would pull CUDA torch); a peer that is not installed skips its test, saying so. What a peer has and ours
has not is written next to its cases, with the equation that differs.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

from fusedoptim import optim
from tests.conftest import assert_close, make_params, random_grads

SHAPES = [(1029,), (3, 7, 11), (17, 33), (1,)]  # odd sizes; for Tiger two biases (ndim ≤ 1) and two matrices
STEPS = 20
IMPLS = ("reference", "triton")


def not_installed(distribution: str) -> str:
    return (f"{distribution} is not installed: `./dev test` installs the pinned peers, or "
            f"`pip install --no-deps {distribution}`")


@dataclass(frozen=True)
class Case:
    ours: str  # our class, optim.<ours>
    options: dict  # our hyperparameters
    peer: str  # the peer's class, by name in its module (imported only once the test knows it is there)
    peer_options: dict
    # Our state name -> the peer's, or -> f(peer state dict, step) giving it in our convention.
    states: dict = field(default_factory=dict)
    # Called with the peer before each step (Tiger's per-tensor lr, which the peer takes per group).
    before_step: Optional[Callable] = None
    peer_groups: Callable = lambda params: params  # how the peer receives the params


def cases(case_list):
    """pytest params with ids ``<name>-<impl>``."""
    return [pytest.param(case, impl, id=f"{name}-{impl}") for name, case in case_list.items() for impl in IMPLS]


def run_and_compare(case, impl, peer_class, what):
    """Both optimizers over STEPS steps of the same gradients; every param and mapped state after each."""
    params, peer_params = make_params(SHAPES, torch.float32), make_params(SHAPES, torch.float32)
    ours = getattr(optim, case.ours)(params, **case.options, impl=impl)
    peer = peer_class(case.peer_groups(peer_params), **case.peer_options)
    rule = ours.rule
    assert set(case.states) == set(rule.state_names(ours.param_groups[0])), \
        f"{what}: every state of ours is compared (mapped {sorted(case.states)})"
    tolerance = rule.tolerances[torch.float32]
    for step in range(1, STEPS + 1):
        for param, peer_param, grad in zip(params, peer_params, random_grads(params, seed=step)):
            param.grad, peer_param.grad = grad, grad.clone()  # peers change grads in place (maximize, L2)
        if case.before_step is not None:
            case.before_step(peer)
        ours.step()
        peer.step()
        for i, (param, peer_param) in enumerate(zip(params, peer_params)):
            assert_close(param, peer_param, tolerance, f"{what}, step {step}: param {i}")
            for name, peer_name in case.states.items():
                peer_state = (peer_name(peer.state[peer_param], step) if callable(peer_name)
                              else peer.state[peer_param][peer_name])
                assert_close(ours.state[param][name], peer_state, tolerance, f"{what}, step {step}: {name} of param {i}")


# lion-pytorch 0.2.5, lion_pytorch.Lion, its reference update_fn (use_triton=False; its Triton path
# needs CUDA). It is our Lion's specification (RULES.md): the same equations in the same order.
LION_PYTORCH = {
    "Lion-defaults": Case("Lion", {}, "Lion", {}, {"exp_avg": "exp_avg"}),
    "Lion-weight_decay": Case("Lion", dict(lr=1e-2, weight_decay=0.1), "Lion", dict(lr=1e-2, weight_decay=0.1),
                         {"exp_avg": "exp_avg"}),
    "Lion-betas": Case("Lion", dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.5), "Lion",
                  dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.5), {"exp_avg": "exp_avg"}),
    # decoupled_weight_decay=True divides λ by the lr given at construction: θ ← θ(1 − lr·λ/lr₀), with a
    # constant lr θ ← θ(1 − λ), a decay that the lr does not scale.
    "Lion-decoupled_weight_decay": Case(
        "Lion", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True), "Lion",
        dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True), {"exp_avg": "exp_avg"}),
}


@pytest.mark.parametrize("case, impl", cases(LION_PYTORCH))
def test_lion_pytorch(case, impl):
    lion_pytorch = pytest.importorskip("lion_pytorch", reason=not_installed("lion-pytorch==0.2.5"))
    run_and_compare(case, impl, getattr(lion_pytorch, case.peer), f"{case.ours} ({impl}) vs lion_pytorch.{case.peer}")


def tiger_learning_rates(lr, weight_decay):
    """Our Tiger's per-tensor steps (RULES.md, param_kind "auto") as pytorch-optimizer's per-group lr and
    decay, one group per tensor: a tensor with ndim ≤ 1 (a bias) moves by lr/2 without decay, any other
    by lr·RMS(θ) of θ before the step, with decay. The peer's θ ← θ(1 − η'λ) − η'·sign(m) equals our
    θ ← θ − η'(sign(m) + λθ)."""
    def set_learning_rates(peer):
        for group in peer.param_groups:
            (param,) = group["params"]
            if param.ndim <= 1:
                group.update(lr=lr / 2, weight_decay=0.0)
            else:
                group.update(lr=lr * param.pow(2).mean().sqrt().item(), weight_decay=weight_decay)
    return set_learning_rates


def one_group_per_tensor(params):
    return [dict(params=[param]) for param in params]


# pytorch-optimizer 4.1.0, each class's per-param path (foreach=False; its foreach path, the default on
# CPU, is the same arithmetic through torch._foreach_*). Its decoupled decay (weight_decouple=True, the
# default of Lion, SignSGD and Tiger) is θ ← θ(1 − lr·λ) before the update, as ours; AdaDelta's default
# (weight_decouple=False) is L2, g ← g + λθ, as ours (torch's). No counterpart in ours: weight_decouple
# flipped (L2 on the sign rules, decoupled decay on AdaDelta); maximize on Lion, SignSGD and Tiger (ours
# has it only where torch.optim does: step on −g instead); Lion's use_gc, adanorm and cautious; Tiger's
# single lr and decay for every tensor (ours takes lr/2 or lr·RMS(θ) by the kind of tensor, mapped here
# per tensor by tiger_learning_rates; an embedding's per-row RMS has no peer form), and ours has the
# original's accumulation, schedule and NaN guard, which the peer has not.
PLAIN = dict(foreach=False)
PYTORCH_OPTIMIZER = {
    "Lion-defaults": Case("Lion", {}, "Lion", PLAIN, {"exp_avg": "exp_avg"}),
    "Lion-weight_decay": Case("Lion", dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1), "Lion",
                              dict(PLAIN, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1), {"exp_avg": "exp_avg"}),
    # fixed_decay=True: θ ← θ(1 − λ), lion-pytorch's decoupled_weight_decay under a constant lr.
    "Lion-fixed_decay": Case("Lion", dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True), "Lion",
                             dict(PLAIN, lr=1e-2, weight_decay=1e-2, fixed_decay=True), {"exp_avg": "exp_avg"}),
    # Its SignSGD's default momentum is 0.9, Signum; momentum=0 is plain SignSGD.
    "SignSGD-momentum0": Case("SignSGD", {}, "SignSGD", dict(PLAIN, momentum=0.0)),
    "SignSGD-momentum0-weight_decay": Case("SignSGD", dict(lr=1e-2, weight_decay=0.1), "SignSGD",
                                           dict(PLAIN, lr=1e-2, momentum=0.0, weight_decay=0.1)),
    "SignSGD-as-Signum": Case("Signum", {}, "SignSGD", PLAIN, {"exp_avg": "momentum_buffer"}),
    "SignSGD-as-Signum-weight_decay": Case("Signum", dict(lr=1e-2, momentum=0.8, weight_decay=0.1), "SignSGD",
                                           dict(PLAIN, lr=1e-2, momentum=0.8, weight_decay=0.1),
                                           {"exp_avg": "momentum_buffer"}),
    "AdaDelta-defaults": Case("Adadelta", {}, "AdaDelta", PLAIN, {"square_avg": "square_avg", "acc_delta": "acc_delta"}),
    "AdaDelta-weight_decay": Case("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1), "AdaDelta",
                                  dict(PLAIN, lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1),
                                  {"square_avg": "square_avg", "acc_delta": "acc_delta"}),
    "AdaDelta-maximize": Case("Adadelta", dict(weight_decay=0.1, maximize=True), "AdaDelta",
                              dict(PLAIN, weight_decay=0.1, maximize=True),
                              {"square_avg": "square_avg", "acc_delta": "acc_delta"}),
    "Tiger-defaults": Case("Tiger", {}, "Tiger", PLAIN, {"m": "exp_avg"},
                           before_step=tiger_learning_rates(1e-3, 0.01), peer_groups=one_group_per_tensor),
    "Tiger-weight_decay": Case("Tiger", dict(lr=1e-2, beta=0.9, weight_decay=0.1), "Tiger",
                               dict(PLAIN, beta=0.9), {"m": "exp_avg"},
                               before_step=tiger_learning_rates(1e-2, 0.1), peer_groups=one_group_per_tensor),
}


@pytest.mark.parametrize("case, impl", cases(PYTORCH_OPTIMIZER))
def test_pytorch_optimizer(case, impl):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason=not_installed("pytorch-optimizer==4.1.0"))
    run_and_compare(case, impl, getattr(pytorch_optimizer, case.peer),
                    f"{case.ours} ({impl}) vs pytorch_optimizer.{case.peer}")


def without_bias_correction(name, beta):
    """heavyball's AdamW keeps the bias-corrected moments m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ) (its EMA
    runs with β̂ₜ = 1 − (1 − β)/(1 − βᵗ)); ours keep torch's m and v: m = m̂·(1 − β1ᵗ)."""
    return lambda peer_state, step: peer_state[0][name] * (1 - beta ** step)


def adam_states(betas):
    beta1, beta2 = betas
    return {"exp_avg": without_bias_correction("update_by_adam_exp_avg_0", beta1),
            "exp_avg_sq": without_bias_correction("update_by_adam_exp_avg_sq_0", beta2)}


# heavyball 3.2.1, its default multi-tensor chain run eagerly: heavyball.utils.compile_mode = None (its
# default, "max-autotune-no-cudagraphs", torch.compiles every fused function), compile_step=False (the
# default). On fp32 storage its stochastic rounding is a plain copy, so a run is deterministic. AdamW:
# its denominator is max(√v̂, ε) where ours (torch's) is √v̂ + ε, equal to fp32 rounding while √v̂ ≫ ε
# (gradients of order 1 here; ε/√v̂ ≤ 1e-4 on the smallest first-step gradient); the rest is torch's
# AdamW, θ ← θ(1 − lr·λ) − lr·m̂/denominator. Its defaults (lr 0.0025, betas (0.9, 0.99), weight_decay 0)
# are not ours, so every option is given to both. SGD: heavy-ball momentum b ← β·b + g, θ ← θ − lr·b,
# torch's SGD with dampening 0 (the first b is g either way). No counterpart in ours: SGD's weight
# decay, which heavyball decouples (θ ← θ(1 − lr·λ) − lr·b) where ours, as torch, adds λθ to g; caution,
# mars, palm, warmup_steps > 0 and ECC storage.
HEAVYBALL_ADAM = dict(lr=0.0025, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
HEAVYBALL_ADAM_DECAY = dict(lr=1e-2, betas=(0.8, 0.999), eps=1e-8, weight_decay=0.1)
HEAVYBALL = {
    "AdamW-defaults": Case("AdamW", HEAVYBALL_ADAM, "AdamW", HEAVYBALL_ADAM, adam_states(HEAVYBALL_ADAM["betas"])),
    "AdamW-weight_decay": Case("AdamW", HEAVYBALL_ADAM_DECAY, "AdamW", HEAVYBALL_ADAM_DECAY,
                               adam_states(HEAVYBALL_ADAM_DECAY["betas"])),
    "SGD-defaults": Case("SGD", dict(lr=0.0025, momentum=0.9), "SGD", {},
                         {"momentum_buffer": lambda peer_state, step: peer_state[0]["heavyball_momentum_momentum_0"]}),
    "SGD-no-momentum": Case("SGD", dict(lr=1e-2), "SGD", dict(lr=1e-2, beta=0.0)),  # ours keeps no buffer
}


@pytest.mark.parametrize("case, impl", cases(HEAVYBALL))
def test_heavyball(case, impl, monkeypatch):
    heavyball = pytest.importorskip("heavyball", reason=not_installed("heavyball==3.2.1"))
    monkeypatch.setattr(heavyball.utils, "compile_mode", None)
    run_and_compare(case, impl, getattr(heavyball, case.peer), f"{case.ours} ({impl}) vs heavyball.{case.peer}")
