"""The launch plan of a step (fusedoptim/optim/plan.py): built once with every check, reused while nothing changes,
rebuilt when something does; and what a step refuses, before any tensor changes, in every impl.

Kernel memory traffic is observed in Triton's interpreter: ``MemoryTrace`` records the address of
every element a kernel loads or stores, so a test can say that a launch never touched memory outside
its tensors, or never touched θ at all.
"""
import copy
import io
import pickle

import numpy as np
import pytest
import torch
from triton.runtime import interpreter

from fusedoptim import optim
from fusedoptim.optim.registry import RULES, Tolerance
from tests.conftest import (DEVICE, assert_close, hyperparameters_for_tests, impls_of, make_params, random_grads,
                            twin_options)
from tests.test_amp import assert_identical, hyper, snapshot

IMPLS = ("triton", "reference", "auto")
STATEFUL = [rule for rule in RULES.values() if rule.state_names(hyper(rule))]
KERNEL_RULES = [rule for rule in RULES.values() if rule.has_kernel]  # for what the fused step's plan does
EXACT = Tolerance(atol=0.0, rtol=0.0)
SHAPES = [(33,), (5, 13)]


def set_grads(params, seed, rule=None):
    for p, g in zip(params, random_grads(params, seed, rule)):
        p.grad = g


def stepped(rule, impl, shapes=SHAPES, steps=1, **options):
    params = make_params(shapes, torch.float32, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyper(rule), impl=impl, **options)
    for index in range(steps):
        set_grads(params, index, rule)
        optimizer.step()
    return optimizer, params


class MemoryTrace:
    """Every address the interpreted kernels load from or store to while active (CPU only)."""

    def __init__(self, monkeypatch):
        self.loads, self.stores = [], []
        load, store = interpreter.InterpreterBuilder.create_masked_load, interpreter.InterpreterBuilder.create_masked_store

        def traced_load(builder, ptrs, mask, *args):
            self.loads.append(np.asarray(ptrs.data)[np.asarray(mask.data, dtype=bool)].astype(np.uint64))
            return load(builder, ptrs, mask, *args)

        def traced_store(builder, ptrs, value, mask, *args):
            self.stores.append(np.asarray(ptrs.data)[np.asarray(mask.data, dtype=bool)].astype(np.uint64))
            return store(builder, ptrs, value, mask, *args)

        monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", traced_load)
        monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_store", traced_store)

    @staticmethod
    def _touches(addresses, tensor) -> bool:
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        return any(((a >= start) & (a < end)).any() for a in addresses)

    def reads(self, tensor) -> bool:
        return self._touches(self.loads, tensor)

    def writes(self, tensor) -> bool:
        return self._touches(self.stores, tensor)


# --- states that do not belong to their param ---------------------------------------------------

def _sentinel_view(like, size, value=123.0):
    """A view of ``size`` elements at the front of a buffer whose remaining elements hold ``value``."""
    buffer = torch.full((size + 64,), value, dtype=like.dtype, device=like.device)
    return buffer[:size], buffer


@pytest.mark.parametrize("size", ["smaller", "larger"])
@pytest.mark.parametrize("rule, impl", [pytest.param(rule, impl, id=f"{rule.name}-{impl}") for rule in STATEFUL
                                        for impl in impls_of(rule, IMPLS)])
def test_a_state_of_another_size_is_refused_before_any_change(rule, size, impl):
    """A 33-element param whose first state is a view of 5 (or 40) elements: the fused step would write
    past its end (memory after it holds a sentinel). Refused, naming the param and the state, and
    every param, state and counter is left bit for bit as it was."""
    optimizer, params = stepped(rule, impl)
    name = rule.state_names(optimizer.param_groups[0])[0]
    view, buffer = _sentinel_view(params[0], 5 if size == "smaller" else 40)
    optimizer.state[params[0]][name] = view
    set_grads(params, 1, rule)
    before, buffer_before = snapshot(optimizer, params), buffer.clone()
    with pytest.raises(ValueError, match=f"state '{name}' of param 0 of param group 0 .*needs"):
        optimizer.step()
    assert_identical(snapshot(optimizer, params), before, f"{rule.name} ({impl})")
    assert torch.equal(buffer, buffer_before), "memory past the state's end was written"


@pytest.mark.parametrize("rule, impl", [pytest.param(rule, impl, id=f"{rule.name}-{impl}") for rule in STATEFUL
                                        for impl in impls_of(rule, IMPLS)])
def test_a_param_replaced_by_a_larger_one_is_refused_before_any_change(rule, impl):
    """p.data = a larger tensor (and its gradient): its states are now too small. The plan reused from
    the last step must see that the param moved, and refuse before any change."""
    optimizer, params = stepped(rule, impl, steps=2)
    params[0].data = make_params([(50,)], torch.float32, seed=7, rule=rule)[0]
    set_grads(params, 2, rule)
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match="param 0 of param group 0 .*needs torch.float32 \\(50,\\)"):
        optimizer.step()
    assert_identical(snapshot(optimizer, params), before, f"{rule.name} ({impl})")


@pytest.mark.parametrize("rule", STATEFUL, ids=lambda rule: rule.name)
def test_a_checkpoint_of_another_model_is_refused_at_load(rule):
    """States shaped for other params: load_state_dict raises, naming the param, and changes nothing."""
    impl = impls_of(rule)[0]  # the load checks the same for every impl: the kernel's, where there is one
    optimizer, params = stepped(rule, impl)
    other, _ = stepped(rule, impl, shapes=[(33,), (5, 12)])
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match="param 1 .*shape \\(5, 12\\).* param has shape \\(5, 13\\)"):
        optimizer.load_state_dict(other.state_dict())
    assert_identical(snapshot(optimizer, params), before, rule.name)


# --- layouts ------------------------------------------------------------------------------------

TWINS = [rule for rule in RULES.values() if rule.torch_twin is not None]
# Dense params of any stride order walked by the kernel: the rules with one (SparseAdam's reference
# indexes the held entries, whatever the strides).
KERNEL_TWINS = [rule for rule in TWINS if rule.has_kernel]


def layout_params(seed=0):
    """A channels_last Conv2d weight, a transposed matrix and a plain vector, with gradients laid out
    like them (as autograd lays them out)."""
    generator = torch.Generator().manual_seed(seed)
    conv = torch.randn(8, 3, 3, 3, generator=generator).to(DEVICE).contiguous(memory_format=torch.channels_last)
    transposed = torch.randn(7, 5, generator=generator).to(DEVICE).t()
    vector = torch.randn(11, generator=generator).to(DEVICE)
    return [conv, transposed, vector]


def layout_grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.empty_like(p).copy_(torch.randn(p.shape, generator=generator).to(DEVICE)) for p in params]


@pytest.mark.parametrize("impl", ["triton", "auto"])
@pytest.mark.parametrize("rule", KERNEL_TWINS, ids=lambda rule: rule.name)
def test_channels_last_and_transposed_params_step_like_torch(rule, impl, monkeypatch):
    """Dense params of any stride order are walked linearly by the kernel (no fallback: every launch
    is counted), their states are laid out like them, and 5 steps equal torch's."""
    from fusedoptim.kernels import launcher
    launches = []
    kernel = launcher.multi_tensor_update_kernel
    monkeypatch.setattr(launcher, "multi_tensor_update_kernel",
                        type("Counting", (), {"__getitem__": lambda self, grid: launches.append(grid) or kernel[grid]})())
    options = {name: value for name, value in hyper(rule).items() if name != "lr_schedule"}
    ours, theirs = layout_params(), layout_params()
    optimizer = getattr(optim, rule.name)(ours, **options, impl=impl)
    torch_optimizer = rule.torch_twin(theirs, **twin_options(rule, options))
    for step in range(5):
        for a, b, g in zip(ours, theirs, layout_grads(ours, 10 * step)):
            a.grad, b.grad = g, g.clone()
        optimizer.step()
        torch_optimizer.step()
    assert launches, f"{rule.name} ({impl}): the fused kernel never ran"
    tolerance = rule.tolerances[torch.float32]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.stride() == b.stride(), "the param's layout changed"
        assert_close(a, b, tolerance, f"{rule.name} ({impl}) param {i}")
        for name, value in torch_optimizer.state[b].items():
            if isinstance(value, torch.Tensor) and value.dim():
                assert optimizer.state[a][name].stride() == a.stride(), f"state {name} is not laid out as its param"
                assert_close(optimizer.state[a][name], value, tolerance, f"{rule.name} ({impl}) state {name} of {i}")


@pytest.mark.parametrize("rule", KERNEL_RULES, ids=lambda rule: rule.name)
def test_channels_last_states_from_a_checkpoint_take_the_params_layout(rule):
    """A checkpoint whose states are contiguous for a channels_last param is loaded in the param's
    layout, so that the fused step can still walk them, and resumes as the reference does."""
    runs = []
    for impl in ("triton", "reference"):
        params = [p.abs() if rule.nonnegative_params else p for p in layout_params()]  # abs keeps the layout
        optimizer = getattr(optim, rule.name)(params, **hyper(rule), impl=impl)
        for p, g in zip(params, layout_grads(params, 0)):
            p.grad = g
        optimizer.step()
        state_dict = copy.deepcopy(optimizer.state_dict())
        for state in state_dict["state"].values():
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim():
                    state[name] = value.contiguous()
        optimizer.load_state_dict(state_dict)
        for p in params:
            for value in optimizer.state[p].values():
                assert value.dim() == 0 or value.stride() == p.stride(), "a state was not loaded in its param's layout"
        for p, g in zip(params, layout_grads(params, 1)):
            p.grad = g
        optimizer.step()
        runs.append(params)
    for a, b in zip(*runs):
        assert_close(a, b, rule.tolerances[torch.float32], rule.name, int(rule.sign_flip_fraction * a.numel()))


# --- copies and checkpoints ---------------------------------------------------------------------

def _round_trip(kind, objects):
    if kind == "deepcopy":
        return copy.deepcopy(objects)
    if kind == "pickle":
        return pickle.loads(pickle.dumps(objects))
    buffer = io.BytesIO()
    torch.save(objects, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("kind", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("rule", RULES.values(), ids=lambda rule: rule.name)
def test_a_copy_keeps_every_option_and_steps_like_the_original(rule, kind):
    """bf16 params with fp32 state, stochastic rounding from seed 3, impl="triton" (the reference for a
    rule without a kernel): a copy of the optimizer (with its params) after two steps takes three more
    steps bit for bit as the original."""
    impl = impls_of(rule)[0]
    params = make_params(SHAPES, torch.bfloat16, rule=rule)
    optimizer = getattr(optim, rule.name)(params, **hyper(rule), impl=impl, state_dtype=torch.float32,
                                          stochastic_rounding=True, seed=3)
    for step in range(2):
        set_grads(params, step, rule)
        optimizer.step()
    copy_params, copied = _round_trip(kind, (params, optimizer))
    for name in ("impl", "state_dtype", "stochastic_rounding", "seed", "gradient_release"):
        assert getattr(copied, name) == getattr(optimizer, name), name
    assert copied.param_groups[0]["params"][0] is copy_params[0]
    for step in range(2, 5):
        for ps in (params, copy_params):
            set_grads(ps, step, rule)
        optimizer.step()
        copied.step()
    assert_identical(snapshot(copied, copy_params), snapshot(optimizer, params), f"{rule.name} {kind}")
    assert f"impl={impl!r}" in repr(copied) and "stochastic_rounding=True" in repr(copied)


def test_a_copy_of_a_gradient_release_optimizer_releases_its_own_params():
    model = torch.nn.Linear(4, 3).to(DEVICE)
    tiger = optim.Tiger(model.parameters(), gradient_release=True, lr=1e-2)
    model_copy, tiger_copy = copy.deepcopy((model, tiger))
    before = [p.detach().clone() for p in model.parameters()]
    model_copy(torch.ones(2, 4, device=DEVICE)).sum().backward()
    assert all(p.grad is None for p in model_copy.parameters()), "the copy did not release its gradients"
    assert not any(torch.equal(p, b) for p, b in zip(model_copy.parameters(), before)), "the copy did not step"
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), "the original stepped"


@pytest.mark.parametrize("number", [int, float], ids=["int", "float"])
@pytest.mark.parametrize("rule, impl", [pytest.param(rule, impl, id=f"{rule.name}-{impl}") for rule in TWINS
                                        if "step" in rule.scalar_states for impl in impls_of(rule)])
def test_a_checkpoint_with_step_as_a_python_number_resumes_like_torch(rule, impl, number):
    """Older torch checkpoints store `step` as a Python int or float (torch's SparseAdam still does):
    loaded, converted to the tensor the kernel reads, and the resumed run equals torch's resumed from
    the same checkpoint."""
    options = {name: value for name, value in hyper(rule).items()}
    theirs = make_params(SHAPES, torch.float32)
    torch_optimizer = rule.torch_twin(theirs, **twin_options(rule, options))
    for step in range(3):
        set_grads(theirs, step, rule)
        torch_optimizer.step()
    checkpoint = copy.deepcopy(torch_optimizer.state_dict())
    for state in checkpoint["state"].values():
        state["step"] = number(float(state["step"]))  # a tensor, or SparseAdam's int
    ours = [p.detach().clone() for p in theirs]
    optimizer = getattr(optim, rule.name)(ours, **options, impl=impl)
    optimizer.load_state_dict(checkpoint)
    torch_optimizer.load_state_dict(checkpoint)
    for step in range(3, 6):
        for ps in (ours, theirs):
            set_grads(ps, step, rule)
        optimizer.step()
        torch_optimizer.step()
    for a, b in zip(ours, theirs):
        assert_close(a, b, rule.tolerances[torch.float32], f"{rule.name} ({impl}) resumed")
        assert optimizer.state[a]["step"].item() == 6


@pytest.mark.parametrize("rule", [r for r in RULES.values() if "step" in r.scalar_states], ids=lambda rule: rule.name)
def test_a_checkpoint_without_step_is_refused_at_load(rule):
    optimizer, params = stepped(rule, impls_of(rule)[0])
    state_dict = copy.deepcopy(optimizer.state_dict())
    del state_dict["state"][1]["step"]
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match="param 1 .*has no 'step'"):
        optimizer.load_state_dict(state_dict)
    assert_identical(snapshot(optimizer, params), before, rule.name)


# --- the plan reused, and rebuilt --------------------------------------------------------------

EVENTS = ["fresh gradients", "add_param_group", "load_state_dict", "p.data replaced", "a grad becomes None"]


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("rule", KERNEL_RULES, ids=lambda rule: rule.name)
def test_the_plan_is_reused_until_something_changes_and_the_steps_equal_the_reference(rule, event):
    """Two optimizers, fused and reference, see the same event between steps: the fused one reuses its
    plan across plain steps (after zero_grad(set_to_none=True) too), rebuilds it after the event, and
    both end equal."""
    runs = []
    for impl in ("triton", "reference"):
        params = make_params(SHAPES + [(9,)], torch.float32, rule=rule)
        optimizer = getattr(optim, rule.name)(params[:2], **hyper(rule), impl=impl)
        plans = []
        for step in range(6):
            optimizer.zero_grad(set_to_none=True)
            set_grads(params, step, rule)
            if step == 3:
                if event == "add_param_group":
                    optimizer.add_param_group({"params": [params[2]]})
                elif event == "load_state_dict":
                    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
                elif event == "p.data replaced":
                    params[1].data = params[1].data.clone() * 0.5
                elif event == "a grad becomes None":
                    params[0].grad = None
            optimizer.step()
            plans.append(optimizer.runtime.plan)
        runs.append((params, optimizer, plans))
    (params, optimizer, plans), (ref_params, reference, _) = runs
    assert plans[1] is plans[2] and plans[4] is plans[5], f"{rule.name}: the plan was not reused"
    if event != "fresh gradients":
        assert plans[3] is not plans[2], f"{rule.name}: the plan was not rebuilt after {event}"
    tolerance = rule.tolerances[torch.float32]
    for i, (a, b) in enumerate(zip(params, ref_params)):
        assert_close(a, b, tolerance, f"{rule.name} after {event}: param {i}", int(rule.sign_flip_fraction * a.numel()))
        for name, value in reference.state[b].items():
            assert_close(optimizer.state[a][name], value, tolerance, f"{rule.name} after {event}: {name} of {i}")


@pytest.mark.parametrize("rule", [RULES["SGD"], RULES["AdamW"], RULES["Lion"]], ids=lambda rule: rule.name)
def test_a_group_of_two_launches_reads_each_steps_fresh_gradients(rule):
    """fp32 and bf16 params in one group take two launches, each covering part of the group. Each
    step's gradients are new tensors (zero_grad(set_to_none=True), then backward), the earlier ones
    kept alive so that no new one takes a freed one's address: a launch still pointing at an old
    gradient would step with it (or, once it is freed, read freed memory). 4 steps with the plan
    reused against the reference."""
    runs = []
    for impl in ("triton", "reference"):
        params = [*make_params(SHAPES, torch.float32, rule=rule), *make_params([(17,)], torch.bfloat16, seed=1, rule=rule)]
        optimizer = getattr(optim, rule.name)(params, **hyper(rule), impl=impl)
        kept, plans = [], []
        for step in range(4):
            optimizer.zero_grad(set_to_none=True)
            set_grads(params, step, rule)
            kept.append([p.grad for p in params])
            optimizer.step()
            plans.append(optimizer.runtime.plan)
        runs.append((params, optimizer, plans))
    (params, optimizer, plans), (ref_params, reference, _) = runs
    assert plans[1] is plans[3], f"{rule.name}: the plan was not reused, so its refresh was not run"
    for i, (a, b) in enumerate(zip(params, ref_params)):
        tolerance = rule.tolerances[a.dtype]
        assert_close(a, b, tolerance, f"{rule.name}: param {i} ({a.dtype})", int(rule.sign_flip_fraction * a.numel()))
        for name, value in reference.state[b].items():
            assert_close(optimizer.state[a][name], value, tolerance, f"{rule.name}: {name} of param {i}")


def test_scalar_states_are_counted_by_one_op_per_group():
    """The step counters of a group's params are views of one buffer: a step adds to it once."""
    optimizer, params = stepped(RULES["AdamW"], "triton", shapes=[(3,)] * 5, steps=2)
    steps = [optimizer.state[p]["step"] for p in params]
    assert all(step._base is steps[0]._base for step in steps) and steps[0]._base is not None
    assert [step.item() for step in steps] == [2.0] * 5


# --- Tiger's and SGDHD's reductions ------------------------------------------------------------

@pytest.mark.skipif(DEVICE.type != "cpu", reason="memory traffic is traced in Triton's CPU interpreter")
def test_tiger_leaves_theta_alone_on_micro_steps_that_do_not_move_it(monkeypatch):
    """k = 3: on the first two micro-steps of a cycle neither the reduce nor the update launch reads or
    writes θ (only g and m); on the third both read θ (RMS, update) and the update writes it. A NaN
    gradient on a quiet micro-step makes the guard read and shrink that tensor's θ, and only that one."""
    params = make_params([(40, 7), (300,)], torch.float32)
    tiger = optim.Tiger(params, grad_accum_steps=3, impl="triton")
    set_grads(params, 0)
    tiger.step()  # the plan is built; micro-step 0 done
    set_grads(params, 1)
    trace = MemoryTrace(monkeypatch)
    tiger.step()  # micro-step 1: quiet
    assert not any(trace.reads(p) or trace.writes(p) for p in params), "θ touched on a micro-step that does not move it"
    assert all(trace.reads(p.grad) and trace.writes(tiger.state[p]["m"]) for p in params)
    trace.loads.clear()
    trace.stores.clear()
    set_grads(params, 2)
    tiger.step()  # micro-step 2: moves θ
    assert all(trace.reads(p) and trace.writes(p) for p in params)
    trace.loads.clear()
    trace.stores.clear()
    set_grads(params, 3)
    params[1].grad[5] = float("nan")
    tiger.step()  # micro-step 3 (quiet) with a NaN in the bias' gradient
    assert trace.writes(params[1]) and not trace.writes(params[0])


@pytest.mark.skipif(DEVICE.type != "cpu", reason="launches are counted in Triton's CPU interpreter")
@pytest.mark.parametrize("name", [rule.name for rule in RULES.values() if rule.reduce is not None])
def test_a_rule_with_a_reduction_takes_one_reduce_launch_and_no_torch_op_per_tensor(name, monkeypatch):
    """A step of 64 tensors: one reduce and one update launch, and the same torch ops as a step of 8 (none
    per tensor): a handful (Tiger: count the steps, clear the sums, count the NaN skips; with caution, its
    sums made means), plus those of the row's declared scalar updates, which run once on each device's
    packed scalars (AdEMAMix's warm-ups). Launches are recorded, not run, so that the interpreter's own
    copies of kernel arguments are not counted."""
    rule = RULES[name]
    launches, ops = step_launches_and_ops(rule, 64, monkeypatch)
    assert sorted(launches) == ["multi_tensor_reduce_kernel", "multi_tensor_update_kernel"], launches
    assert ops == step_launches_and_ops(rule, 8, monkeypatch)[1], f"{name}: {ops} for 64 tensors"
    if not rule.scalar_updates:
        assert len(ops) <= 5, f"{name}: {ops} for 64 tensors"


def step_launches_and_ops(rule, count: int, monkeypatch) -> tuple:
    """(the kernels launched, the aten ops run) by one step of ``count`` (4, 4) tensors after two warm-ups."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AtenOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.found = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func).startswith("aten."):
                self.found.append(str(func))
            return func(*args, **(kwargs or {}))

    params = make_params([(4, 4)] * count, torch.float32)
    # the test values (SGD's momentum) and the flags under which its sums exist (cautious)
    options = {**hyperparameters_for_tests(rule), **{spec.when: True for spec in rule.sums if spec.when}}
    optimizer = getattr(optim, rule.name)(params, impl="triton", **options)
    for warm_up in range(2):  # two: SGD's plan is laid out again once its first step made its buffer
        set_grads(params, warm_up)
        optimizer.step()
    set_grads(params, 1)
    launches = []
    with monkeypatch.context() as patch:
        patch.setattr(interpreter.InterpretedFunction, "run",
                      lambda self, *args, **kwargs: launches.append(self.fn.__name__))
        with AtenOps() as ops:
            optimizer.step()
    return launches, ops.found


def test_bytes_per_param_says_what_tiger_moves_on_each_micro_step():
    tiger = RULES["Tiger"]
    group = dict(tiger.defaults)
    # moving: the reduce reads g (NaN verdict) and θ (RMS); the update reads θ, g, m and writes θ, m
    assert tiger.bytes_per_param(group) == 4 * (2 + 3) + 2 * 4
    # quiet: the reduce reads g; the update reads g, m and writes m
    assert tiger.bytes_per_param(group, moves_param=False) == 4 + 4 + 2 * 4
