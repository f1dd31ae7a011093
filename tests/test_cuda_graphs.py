"""Capturable steps: after a warm-up, the fused step of every rule asks the host nothing, copies
nothing from it and makes no state, so torch.cuda.graph can record it and replay it with new
gradients and a new lr.

On the CPU the capture path runs eagerly: ``capturing`` is forced on, and the step must still equal
an eager one, write new gradients' addresses into its tables on the device (by kernel arguments, not
a copy from the host), and keep its launches for replays. The capture itself needs a GPU (the last test).
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fusedoptim import optim
from fusedoptim.kernels import launcher
from fusedoptim.optim.registry import RULES
from tests.conftest import DEVICE, make_params, random_grads
from tests.test_amp import assert_identical, grad_scaler, hyper, snapshot

SHAPES = [(1023,), (3, 7, 5), (1,)]
WARM_UP_STEPS = 2  # the first step makes the state; the second runs as every later step does
RULE_IDS = dict(ids=lambda rule: rule.name)


class HostTraffic(TorchDispatchMode):
    """Records the ops of a step that would sync with the host or copy host data to the device. Each
    launch is one opaque op (fusedoptim/optim/ops.py), so this sees our Python step, not the launcher's inside."""

    SYNCS = {"aten._local_scalar_dense.default", "aten.lift_fresh.default", "aten.lift_fresh_copy.default"}

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        if str(func) in self.SYNCS or len(devices | ({kwargs["device"]} if kwargs.get("device") else set())) > 1:
            self.found.append(str(func))
        return func(*args, **kwargs)


def warmed_up(rule, seed=0, **options):
    params = make_params(SHAPES, torch.float32, rule=rule)
    lr = torch.tensor(1e-2, device=DEVICE)
    optimizer = getattr(optim, rule.name)(params, **{**hyper(rule), "lr": lr}, impl="triton", **options)
    for index in range(WARM_UP_STEPS):
        set_grads(params, seed + index)
        optimizer.step()
    return optimizer, params


def set_grads(params, seed):
    """New gradient tensors, as backward makes after zero_grad(set_to_none=True)."""
    for p, g in zip(params, random_grads(params, seed)):
        p.grad = g


def copy_grads(params, seed):
    """New gradient values in the same tensors, as backward makes after zero_grad(set_to_none=False)."""
    for p, g in zip(params, random_grads(params, seed)):
        p.grad.copy_(g)


@pytest.fixture
def forced_capture(monkeypatch):
    """The capture branch of the step and the launcher, taken on any device."""
    monkeypatch.setattr(launcher, "capturing", lambda device: True)


@pytest.mark.parametrize("with_scaler", [False, True], ids=["plain", "grad-scaler"])
@pytest.mark.parametrize("rule", [r for r in RULES.values() if r.has_kernel], **RULE_IDS)  # a graph captures the kernel
def test_a_warmed_up_step_makes_no_host_sync_and_no_host_copy(rule, with_scaler):
    optimizer, params = warmed_up(rule)
    copy_grads(params, 10)
    if with_scaler:  # what GradScaler.step hands the optimizer
        optimizer.grad_scale, optimizer.found_inf = grad_scaler()._scale, torch.zeros(1, device=DEVICE)
    with HostTraffic() as traffic:
        optimizer.step()
    assert traffic.found == [], f"{rule.name}: the step called {traffic.found}"


@pytest.mark.parametrize("rule", [r for r in RULES.values() if r.has_kernel], **RULE_IDS)  # a graph captures the kernel
def test_the_capture_path_copies_nothing_from_the_host_and_reads_the_new_gradients(rule, request):
    """Gradients made inside the capture (torch's whole-network recipe zeroes them to None first) are
    new tensors: their addresses reach the tables through kernel arguments, recorded by the graph, not
    through a copy from the host, which a capture must not make."""
    eager, eager_params = warmed_up(rule)
    captured, params = warmed_up(rule)
    set_grads(eager_params, 10)
    eager.step()
    request.getfixturevalue("forced_capture")
    set_grads(params, 10)
    with HostTraffic() as traffic:
        captured.step()
    assert traffic.found == [], f"{rule.name}: the capture path called {traffic.found}"
    assert_identical(snapshot(captured, params), snapshot(eager, eager_params), rule.name)


@pytest.mark.parametrize("rule", [r for r in RULES.values() if r.name in ("AdamW", "Tiger", "SGDHD", "SGD")],
                         **RULE_IDS)
@pytest.mark.parametrize("stochastic_rounding", [False, True], ids=["nearest", "stochastic"])
def test_the_capture_path_steps_as_the_eager_one_and_keeps_its_tables(rule, stochastic_rounding, request):
    """AdamW (a plain rule), Tiger (scalars made in the step), SGDHD (a reduction before the update)
    and SGD (a state made on the first step)."""
    options = dict(stochastic_rounding=stochastic_rounding)
    eager, eager_params = warmed_up(rule, **options)
    captured, captured_params = warmed_up(rule, **options)
    set_grads(eager_params, 10)
    eager.step()
    request.getfixturevalue("forced_capture")
    set_grads(captured_params, 10)
    captured.step()
    plan_launches = [launch for group in captured.runtime.plan.groups for _, _, launch in group.launches]
    assert plan_launches and all(map(launcher.kept_for_replay, plan_launches)), \
        "the launches a capture records must be kept for its replays"
    assert_identical(snapshot(captured, captured_params), snapshot(eager, eager_params), rule.name)


@pytest.mark.parametrize("rule", [r for r in RULES.values() if r.has_kernel and (r.states or r.scalar_states)], **RULE_IDS)
def test_capturing_before_the_state_exists_is_refused_untouched(rule, forced_capture):
    params = make_params(SHAPES, torch.float32, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyper(rule), impl="triton")
    set_grads(params, 0)
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match="eagerly .* before capturing"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and not optimizer.state


def test_capturing_the_reference_is_refused(forced_capture):
    params = make_params(SHAPES, torch.float32)
    optimizer = optim.AdamW(params, impl="reference")
    set_grads(params, 0)
    with pytest.raises(RuntimeError, match="impl='triton'"):
        optimizer.step()


def test_a_capture_refuses_an_lr_on_another_device(forced_capture):
    with pytest.raises(ValueError, match="lr=torch.tensor\\(1e-3, device="):
        launcher.on_device(torch.tensor(1e-3, device="meta"), torch.device("cpu"), "a hyperparameter")


@pytest.mark.skipif(DEVICE.type != "cuda", reason="recording a CUDA graph needs a CUDA device")
@pytest.mark.parametrize("rule", [r for r in RULES.values() if r.has_kernel], **RULE_IDS)  # a graph captures the kernel
def test_a_captured_step_replays_as_eager_steps_with_new_gradients_and_lr(rule):
    """torch.cuda.graphs' recipe: warm up on a side stream, capture one step, then per replay copy the
    new gradients into the captured ones and fill_ the lr tensor. Five replays equal five eager steps."""
    eager, eager_params = warmed_up(rule)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        captured, params = warmed_up(rule)
    torch.cuda.current_stream().wait_stream(stream)
    state_before_capture = snapshot(captured, params)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured.step()
    assert_identical(snapshot(captured, params), state_before_capture, f"{rule.name}: capture must not step")
    for index in range(5):
        lr = 1e-2 / (2 + index)
        for optimizer, ps in ((eager, eager_params), (captured, params)):
            for p, g in zip(ps, random_grads(ps, 100 + index)):
                p.grad.copy_(g)
            if not rule.learns_lr:
                optimizer.param_groups[0]["lr"].fill_(lr)
        eager.step()
        graph.replay()
    torch.cuda.synchronize()
    for a, e in zip(snapshot(captured, params), snapshot(eager, eager_params)):
        # SGDHD's dot product adds per-program partial sums atomically, in an order that varies.
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7, msg=lambda m: f"{rule.name}: {m}")
