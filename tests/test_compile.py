"""torch.compile around optimizer.step(): one graph for every rule, and no recompilation when a tensor
lr changes every step, by fill_ or by a scheduler. Each launch is an opaque torch.library op
(fusedoptim/optim/ops.py); counted with dynamo's CompileCounter backend, which runs the captured graph eagerly."""
import gc
import weakref

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from fusedoptim import optim
from fusedoptim.optim import ops
from fusedoptim.optim.registry import RULES
from tests.conftest import make_params, random_grads

SHAPES = [(100,), (3, 7), (1,)]
STEPS = 20


def optimizer_and_params(rule):
    params = make_params(SHAPES, torch.float32, rule=rule)
    return getattr(optim, rule.name)(params, lr=torch.tensor(1e-2), impl="triton"), params


def eager_and_compiled(rule, steps, compile_first_step, before_step=lambda optimizer, index: None):
    """The same steps run eagerly and compiled (the first one eagerly too, unless compile_first_step):
    (eager params and optimizer, compiled params and optimizer, the compilation counter)."""
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        optimizer, params = optimizer_and_params(rule)
        counter = CompileCounter()
        step = torch.compile(optimizer.step, fullgraph=True, backend=counter) if compiled else optimizer.step
        for index in range(steps):
            for p, g in zip(params, random_grads(params, index)):
                p.grad = g
            before_step(optimizer, index)
            (step if index or compile_first_step else optimizer.step)()
        runs.append((params, optimizer))
    return (*runs[0], *runs[1], counter)


def assert_same(rule, compiled, compiled_optimizer, eager, eager_optimizer):
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b), f"{rule.name}: compiled and eager params differ"
        for name, value in eager_optimizer.state[b].items():
            assert torch.equal(compiled_optimizer.state[a][name], value), f"{rule.name}: state {name} differs"


@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if rule.has_kernel], ids=lambda rule: rule.name)
def test_compiled_step_is_one_graph_and_never_recompiles_as_the_lr_changes(rule):
    """The first step runs eagerly (it makes the state); then 20 compiled steps, the lr tensor changed
    by fill_ before each (SGDHD learns its own), equal to the same steps run eagerly."""
    def change_lr(optimizer, index):
        if not rule.learns_lr:
            optimizer.param_groups[0]["lr"].fill_(1e-2 / (1 + index))

    eager, eager_optimizer, compiled, compiled_optimizer, counter = eager_and_compiled(rule, STEPS + 1, False, change_lr)
    assert counter.frame_count == 1, f"{rule.name}: {counter.frame_count} compilations over {STEPS} steps"
    assert_same(rule, compiled, compiled_optimizer, eager, eager_optimizer)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_a_scheduler_changing_a_tensor_lr_does_not_recompile():
    """The scheduler runs outside the compiled step, as in torch's compiled-optimizer recipe: torch
    wraps optimizer.step in lr_scheduler.py when a scheduler is made, and dynamo never traces that
    file, so the step is compiled before the scheduler wraps it."""
    optimizer, params = optimizer_and_params(RULES["AdamW"])
    counter = CompileCounter()
    step = torch.compile(optimizer.step, fullgraph=True, backend=counter)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    for index in range(STEPS + 1):
        for p, g in zip(params, random_grads(params, index)):
            p.grad = g
        (step if index else optimizer.step)()
        scheduler.step()
    assert counter.frame_count == 1
    assert optimizer.param_groups[0]["lr"].item() == pytest.approx(1e-2 * 0.5 ** ((STEPS + 1) // 3))


@pytest.mark.parametrize("name", ["AdamW", "Tiger"])
def test_a_compiled_training_step_traces_the_step_and_keeps_its_graphs(name):
    """Forward, backward, step and zero_grad in one compiled function, as torch's recipe compiles a
    training step: the step is traced into a graph (its op is there; that the step alone has no break
    is the fullgraph test above), the breaks dynamo reports are torch's own (Tensor.backward(), and
    Optimizer.zero_grad, which it skips), and the number of compiled frames stays fixed while the lr
    tensor changes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = getattr(optim, name)(model.parameters(), lr=torch.tensor(1e-2), impl="triton")
    inputs, targets = torch.randn(32, 8), torch.randn(32, 1)

    def train_step():
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    train_step()  # the state is made eagerly
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(train_step)()
    assert any("triton_optim.step" in str(graph.graph) for graph in explanation.graphs), "the step was not traced"
    for reason in explanation.break_reasons:  # torch's own: backward, and Optimizer.zero_grad, which dynamo skips
        assert "Tensor.backward()" in reason.reason or "Optimizer.zero_grad" in reason.reason, reason.reason
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(train_step, backend=counter)
    frames = []
    for index in range(8):
        compiled()
        optimizer.param_groups[0]["lr"].fill_(1e-2 / (2 + index))  # what a scheduler does to a tensor lr
        frames.append(counter.frame_count)
    assert frames == [frames[0]] * 8, f"compiled frames per step: {frames}"


def test_a_float_lr_changed_by_a_scheduler_does_not_recompile_either():
    """The compiled graph only calls the step's op; the op reads the group's hyperparameters at run
    time, so even a Python float lr, changed each step, is no constant of the graph."""
    params = make_params(SHAPES, torch.float32)
    optimizer = optim.AdamW(params, lr=1e-2, impl="triton")
    reference = optim.AdamW(make_params(SHAPES, torch.float32), lr=1e-2, impl="triton")
    counter = CompileCounter()
    torch._dynamo.reset()
    step = torch.compile(optimizer.step, fullgraph=True, backend=counter)
    for index in range(8):
        for opt in (optimizer, reference):
            ps = opt.param_groups[0]["params"]
            for p, g in zip(ps, random_grads(ps, index)):
                p.grad = g
            opt.param_groups[0]["lr"] = 1e-2 / (1 + index)
        (step if index else optimizer.step)()
        reference.step()
    assert counter.frame_count == 1
    for a, b in zip(params, reference.param_groups[0]["params"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if rule.has_kernel], ids=lambda rule: rule.name)
def test_a_cold_start_compiles_once(rule):
    """torch.compile(step, fullgraph=True) called from the very first step, while the state does not
    exist yet: one compilation (the state is made inside the op, at run time, so the graph never sees
    it change), and the steps equal eager ones."""
    eager, eager_optimizer, compiled, compiled_optimizer, counter = eager_and_compiled(rule, 4, True)
    assert counter.frame_count == 1, f"{rule.name}: {counter.frame_count} compilations from a cold start"
    assert_same(rule, compiled, compiled_optimizer, eager, eager_optimizer)


def test_the_op_keeps_no_entry_for_an_optimizer_that_is_gone():
    """The op finds its optimizer by a key; 50 optimizers stepped, eagerly and compiled, then dropped
    leave the key registry as it was, and are collected with their launches' program maps."""
    gc.collect()
    before = ops.registered()
    gone = []
    for index in range(50):
        optimizer, params = optimizer_and_params(RULES["AdamW"])
        for p, g in zip(params, random_grads(params, index)):
            p.grad = g
        (torch.compile(optimizer.step, backend="eager") if index == 0 else optimizer.step)()
        launches = [launch for group in optimizer.runtime.plan.groups for _, _, launch in group.launches]
        gone += [weakref.ref(optimizer), *(weakref.ref(launch.chunk_tensor) for launch in launches)]
        del optimizer, params, launches
    torch._dynamo.reset()  # the compiled step holds its optimizer until its cache is cleared
    gc.collect()
    assert not [ref for ref in gone if ref() is not None], "an optimizer or a program map is kept alive"
    assert ops.registered() == before, f"{ops.registered() - before} keys left for optimizers that are gone"
