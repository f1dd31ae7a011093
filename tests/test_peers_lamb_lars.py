"""pytorch-optimizer's Lamb and LARS (4.1.0) agree with our LAMB and LARS over test_peers' 20 steps, in both
impls, params and every state after every step (test_peers' machinery: its shapes hold two tensors of
one dimension, which LARS steps by plain momentum SGD, and two of more).

LARS is the peer's, so every option is given to both as it is. LAMB is You et al.'s Algorithm 2, which the
peer reaches only with options set away from its defaults and two group values set before each step
(``as_the_paper``): weight_decouple=False (its default decays θ ← θ(1 − ηλ) outside the trust ratio; the
paper adds λθ to the direction inside it), adam_debias=True (its default steps by η/(1 − β1ᵗ)), its
clamp of ‖θ‖ at 10 lifted, and, since it keeps no bias correction of v (r' = m/(√v + ε')), ε' = ε√(1 − β2ᵗ)
and λ' = λ(1 − β1ᵗ)/√(1 − β2ᵗ) at step t, which make its direction c·(r + λθ) with c = (1 − β1ᵗ)/√(1 − β2ᵗ):
the trust ratio cancels c, and the ε' it adds to ‖c·u‖ moves the step by below 1e-8 relative here.
grad_averaging (True), adam, pre_norm, rectify and adanorm stay at their defaults, which are the paper's.
"""
import math

import pytest
import torch

from fusedoptim import optim
from tests.conftest import assert_close, random_grads
from tests.test_peers import IMPLS, PLAIN, Case, cases, not_installed, run_and_compare


def as_the_paper(eps, weight_decay, betas=(0.9, 0.999)):
    """Before each step, the peer's ε and λ for the step it is about to take (its group["step"] + 1)."""
    beta1, beta2 = betas

    def set_bias_corrections(peer):
        peer.clamp = math.inf  # the peer caps ‖θ‖ at its class attribute clamp; the paper's φ is the identity
        for group in peer.param_groups:
            step = group.get("step", 0) + 1
            bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
            group.update(eps=eps * math.sqrt(bias_correction2),
                         weight_decay=weight_decay * bias_correction1 / math.sqrt(bias_correction2))
    return set_bias_corrections


PAPER = dict(PLAIN, weight_decouple=False, adam_debias=True)
LAMB_STATES = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
LAMB_DECAY = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
LAMB = {
    "LAMB-defaults": Case("LAMB", {}, "Lamb", PAPER, LAMB_STATES, before_step=as_the_paper(1e-6, 0.0)),
    "LAMB-weight_decay": Case("LAMB", LAMB_DECAY, "Lamb", dict(PAPER, lr=1e-2, betas=(0.8, 0.99)), LAMB_STATES,
                              before_step=as_the_paper(1e-6, 0.1, (0.8, 0.99))),
    "LAMB-maximize": Case("LAMB", dict(weight_decay=0.01, maximize=True), "Lamb", dict(PAPER, maximize=True),
                          LAMB_STATES, before_step=as_the_paper(1e-6, 0.01)),
}
LARS_STATES = {"momentum_buffer": "momentum_buffer"}
LARS = {
    "LARS-defaults": Case("LARS", {}, "LARS", PLAIN, LARS_STATES),
    "LARS-weight_decay-dampening": Case("LARS", dict(lr=0.1, weight_decay=0.01, dampening=0.5, trust_coefficient=0.02),
                                        "LARS", dict(PLAIN, lr=0.1, weight_decay=0.01, dampening=0.5,
                                                     trust_coefficient=0.02), LARS_STATES),
    "LARS-nesterov-maximize": Case("LARS", dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.1, maximize=True),
                                   "LARS", dict(PLAIN, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.1,
                                                maximize=True), LARS_STATES),
    "LARS-no-momentum": Case("LARS", dict(lr=0.1, momentum=0.0, weight_decay=0.1), "LARS",
                             dict(PLAIN, lr=0.1, momentum=0.0, weight_decay=0.1)),  # neither keeps a buffer
}


@pytest.mark.parametrize("case, impl", cases({**LAMB, **LARS}))
def test_pytorch_optimizer_lamb_and_lars(case, impl):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason=not_installed("pytorch-optimizer==4.1.0"))
    run_and_compare(case, impl, getattr(pytorch_optimizer, case.peer),
                    f"{case.ours} ({impl}) vs pytorch_optimizer.{case.peer}")



def zero_params():
    return [torch.zeros(17, 33), torch.zeros(5)]  # a matrix and a bias


@pytest.mark.parametrize("impl", IMPLS)
def test_lamb_steps_a_tensor_of_zeros_with_a_trust_ratio_of_one(impl):
    """‖θ‖ = 0 makes the trust ratio 1 (0 would freeze a zero-initialised tensor forever). The paper's first
    step then, with m̂ = g and v̂ = g² at t = 1, is θ = −η·g/(|g| + ε) (λθ = 0), written out here: the
    peer's step differs where the ratio is 1, by its missing bias correction of v."""
    params = zero_params()
    ours = optim.LAMB(params, lr=1e-2, weight_decay=0.1, impl=impl)
    grads = random_grads(params, seed=1)
    for param, grad in zip(params, grads):
        param.grad = grad
    ours.step()
    for i, (param, grad) in enumerate(zip(params, grads)):
        assert_close(param, -1e-2 * grad / (grad.abs() + 1e-6), ours.rule.tolerances[torch.float32],
                     f"LAMB ({impl}): param {i}")


@pytest.mark.parametrize("impl", IMPLS)
def test_lars_steps_a_tensor_of_zeros_with_a_trust_ratio_of_one(impl):
    """As for LAMB: a zero matrix's ratio is 1, two steps (the second with ‖θ‖ > 0) against the peer."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason=not_installed("pytorch-optimizer==4.1.0"))
    case = LARS["LARS-weight_decay-dampening"]
    params, peer_params = zero_params(), zero_params()
    ours = optim.LARS(params, **case.options, impl=impl)
    peer = pytorch_optimizer.LARS(peer_params, **case.peer_options)
    for step in (1, 2):
        for param, peer_param, grad in zip(params, peer_params, random_grads(params, seed=step)):
            param.grad, peer_param.grad = grad, grad.clone()
        ours.step()
        peer.step()
        for i, (param, peer_param) in enumerate(zip(params, peer_params)):
            assert_close(param, peer_param, ours.rule.tolerances[torch.float32], f"LARS ({impl}), step {step}: param {i}")
