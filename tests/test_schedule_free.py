"""ScheduleFreeAdamW and ScheduleFreeSGD against the authors' package schedulefree 1.4.1 (AdamWScheduleFree,
SGDScheduleFree), and their train/eval switch: params hold y while training and x for evaluation.

Ten steps with a warm-up of 4 (so both the warm-up and the steps after it run), weight decay, and the
two weightings of the average (the default t^0·γ_max², and t^1 with equal lr weights); eval() and
train() called after steps 3 and 7, the params compared in eval mode too. The registry-driven suites
(test_parity, test_quantized_state, test_bad_input...) cover dtypes, int8/int4 states and bad input.
"""
import copy

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from tests.conftest import assert_close, make_params, random_grads

schedulefree = pytest.importorskip("schedulefree", reason="`./dev test` installs the pinned peers, or "
                                   "`pip install --no-deps schedulefree==1.4.1`")

SHAPES = [(37,), (5, 9)]  # odd sizes: a tail the mask must keep
STEPS, SWITCHES = 10, (3, 7)  # eval/train round trips after these steps
PEERS = {"ScheduleFreeAdamW": ("AdamWScheduleFree", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)),
         "ScheduleFreeSGD": ("SGDScheduleFree", dict(lr=0.1, momentum=0.8, weight_decay=0.1))}
WEIGHTINGS = {"lr-weighted": dict(r=0.0, weight_lr_power=2.0), "step-weighted": dict(r=1.0, weight_lr_power=0.0)}
IMPLS = ("reference", "triton")


def options(rule: str, weighting: str) -> dict:
    return {**PEERS[rule][1], **WEIGHTINGS[weighting], "warmup_steps": 4}


def compare(ours, peer, params, peer_params, what):
    """Every param and state against the peer's: z, exp_avg_sq, and its group scalars k, γ_max, W."""
    tolerance = RULES[type(ours).__name__].tolerances[torch.float32]
    group = peer.param_groups[0]
    for i, (param, peer_param) in enumerate(zip(params, peer_params)):
        assert_close(param, peer_param, tolerance, f"{what}: param {i}")
        state, peer_state = ours.state[param], peer.state[peer_param]
        for name in ("z", "exp_avg_sq"):
            if name in peer_state:
                assert_close(state[name], peer_state[name], tolerance, f"{what}: state {name} of param {i}")
        for name, peer_value in (("step", group["k"]), ("lr_max", group["lr_max"]), ("weight_sum", group["weight_sum"])):
            assert_close(state[name], torch.tensor(peer_value), tolerance, f"{what}: {name} of param {i}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("rule", PEERS)
def test_equals_schedulefree_through_train_and_eval(rule, weighting, impl):
    params = make_params(SHAPES, torch.float32)
    peer_params = [p.detach().clone() for p in params]
    ours = getattr(optim, rule)(params, impl=impl, **options(rule, weighting))
    peer = getattr(schedulefree, PEERS[rule][0])(peer_params, **options(rule, weighting))
    ours.train()  # harmless before any step; the package starts in eval mode and needs it
    peer.train()
    for step in range(1, STEPS + 1):
        for param, peer_param, grad in zip(params, peer_params, random_grads(params, seed=step)):
            param.grad, peer_param.grad = grad.clone(), grad.clone()
        ours.step()
        peer.step()
        compare(ours, peer, params, peer_params, f"{rule} {impl}, step {step}")
        if step in SWITCHES:
            ours.eval()
            peer.eval()
            compare(ours, peer, params, peer_params, f"{rule} {impl}, eval mode after step {step}")
            ours.train()
            peer.train()


def run(params, optimizer, steps):
    for step in steps:
        for param, grad in zip(params, random_grads(params, seed=step)):
            param.grad = grad
        optimizer.step()


@pytest.mark.parametrize("mode", ("train", "eval"))
@pytest.mark.parametrize("rule", PEERS)
def test_a_checkpoint_saved_in_either_mode_resumes_bit_for_bit(rule, mode):
    """Saved after 3 steps (in eval mode: after eval(), then train() to go on), loaded into a fresh
    optimizer over fresh params given the saved values, 3 more steps: equal to the run never stopped."""
    make = lambda params: getattr(optim, rule)(params, impl="triton", **options(rule, "lr-weighted"))
    params = make_params(SHAPES, torch.float32)
    optimizer = make(params)
    run(params, optimizer, range(3))
    if mode == "eval":
        optimizer.eval()
    saved_params, saved = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    optimizer.train()
    run(params, optimizer, range(3, 6))

    fresh = [torch.nn.Parameter(torch.zeros_like(p)) for p in params]
    resumed = make(fresh)
    with torch.no_grad():
        for param, value in zip(fresh, saved_params):
            param.copy_(value)
    resumed.load_state_dict(saved)
    if mode == "eval":  # loaded in eval mode: a step before train() is refused
        with pytest.raises(RuntimeError, match="eval mode"):
            run(fresh, resumed, range(3, 4))
    resumed.train()
    run(fresh, resumed, range(3, 6))
    for i, (param, expected) in enumerate(zip(fresh, params)):
        assert torch.equal(param, expected), f"{rule}, saved in {mode} mode: param {i} differs after resuming"
        for name, value in optimizer.state[expected].items():
            assert torch.equal(resumed.state[param][name], value), f"{rule}: state {name} of param {i} differs"


@pytest.mark.parametrize("rule", PEERS)
def test_a_step_in_eval_mode_is_refused_and_changes_nothing(rule):
    params = make_params(SHAPES, torch.float32)
    optimizer = getattr(optim, rule)(params, impl="triton")
    run(params, optimizer, range(2))
    optimizer.eval()
    before = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    for param, grad in zip(params, random_grads(params, seed=9)):
        param.grad = grad
    with pytest.raises(RuntimeError, match=r"param group 0 is in eval mode.*Call optimizer.train\(\)"):
        optimizer.step()
    for param, saved in zip(params, before[0]):
        assert torch.equal(param, saved), "a param changed although the step was refused"
    for index, state in before[1]["state"].items():
        for name, value in state.items():
            assert torch.equal(optimizer.state[params[index]][name], value), f"state {name} changed"
