"""fo.Muon with what a training loop brings: FSDP2 shards (2 gloo CPU ranks against one process), GradScaler
(an overflow step skipped whole, the others unscaled exactly) and torch.compile (one graph, no
recompilation as the lr changes). Both impls each; the fused one under the Triton interpreter.

Tolerances: none. Sharded, every element-wise op sees the same values as in one process, and each
matrix's Newton–Schulz runs whole, on one rank, with the same kernels (or the oracle's ops) as one
process runs it: the same bits. GradScaler's scale is a power of two, so unscaling is exact.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import fusedoptim as fo
from fusedoptim.optim.matrix_shards import owners
from tests.test_distributed import spawn

IMPLS = ("reference", "triton")
# Sharded over 2 ranks: 3/2 rows, a tall matrix 17/16, a single row (rank 1's shard empty), and a pair of
# one shape; the owners (largest first, to the least loaded rank) give each rank some matrices.
SHARDED_SHAPES = [(5, 33), (33, 17), (1, 8), (17, 33), (17, 33)]
SHARDED_STEPS = 3  # the first starts the momentum from zero; the next two carry it


def test_matrices_are_spread_over_the_ranks_by_cost():
    """Newton–Schulz's cost r²c of SHARDED_SHAPES: 825, 9537, 8, 9537, 9537: the costliest first, each to
    the least loaded rank."""
    costs = [min(shape) ** 2 * max(shape) for shape in SHARDED_SHAPES]
    assert owners(costs, 2) == [1, 0, 1, 1, 0]
    assert owners(costs, 1) == [0] * 5
    assert owners(costs, 4) == [3, 0, 3, 1, 2]


def _sharded_muon_worker(rank, world_size, directory):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Replicate

    from fusedoptim.optim.shards import local, placed_as, shard_range

    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(shape, generator=generator) for shape in SHARDED_SHAPES]
    grads = [[torch.randn(shape, generator=generator) for shape in SHARDED_SHAPES] for _ in range(SHARDED_STEPS)]
    results = {}
    for impl in IMPLS:
        model = torch.nn.ParameterList([torch.nn.Parameter(value.clone()) for value in initial])
        fully_shard(model)
        whole = [torch.nn.Parameter(value.clone()) for value in initial]
        sharded_optimizer = fo.Muon(model.parameters(), impl=impl, lr=0.02)
        whole_optimizer = fo.Muon(whole, impl=impl, lr=0.02)
        equal = []
        for step_grads in grads:
            for p, q, grad in zip(model.parameters(), whole, step_grads):
                _, first, length = shard_range(p)
                p.grad = placed_as(p, grad.narrow(0, first, length).clone())
                q.grad = grad.clone()
            sharded_optimizer.step()
            whole_optimizer.step()
            for p, q in zip(model.parameters(), whole):
                _, first, length = shard_range(p)
                buffer = sharded_optimizer.state[p]["momentum_buffer"]
                equal.append(torch.equal(local(p), q.detach().narrow(0, first, length))
                             and torch.equal(local(buffer), whole_optimizer.state[q]["momentum_buffer"].narrow(0, first, length)))
        buffers = [sharded_optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
        # torch.distributed.checkpoint: saved, then loaded into a fresh optimizer (which DCP first steps
        # with zero gradients and lr 0 to make its state), each rank's shard of every buffer as saved.
        dcp.save(get_optimizer_state_dict(model, sharded_optimizer), checkpoint_id=f"{directory}/{impl}")
        sharded_optimizer.zero_grad()  # DCP makes a fresh optimizer's state only where no param has a gradient
        fresh = fo.Muon(model.parameters(), impl=impl, lr=0.02)
        loaded = get_optimizer_state_dict(model, fresh)
        dcp.load(loaded, checkpoint_id=f"{directory}/{impl}")
        set_optimizer_state_dict(model, fresh, loaded)
        resumed = all(torch.equal(local(fresh.state[p]["momentum_buffer"]), local(b))
                      for p, b in zip(model.parameters(), buffers))
        results[impl] = dict(
            equal=equal, moved=all(not torch.equal(q.detach(), value) for q, value in zip(whole, initial)),
            placed=all(type(b).__name__ == "DTensor" and b.placements == p.placements and b.shape == p.shape
                       for b, p in zip(buffers, model.parameters())),
            local_sizes=[local(p).shape[0] for p in model.parameters()], resumed=resumed)
    mesh = init_device_mesh("cpu", (world_size,))
    replicated = torch.nn.Parameter(DTensor.from_local(initial[0].clone(), mesh, [Replicate()], run_check=False))
    replicated.grad = DTensor.from_local(grads[0][0].clone(), mesh, [Replicate()], run_check=False)
    try:
        fo.Muon([replicated], impl="triton").step()
        results["refused"] = ""
    except ValueError as error:
        results["refused"] = str(error)
    results["replicated_unchanged"] = torch.equal(local(replicated), initial[0])
    return results


def test_fsdp2_shards_step_as_one_process(tmp_path):
    """Three steps of 5 matrices sharded over 2 ranks (uneven shards, an empty one) equal, on each rank's
    rows, the same optimizer on the whole matrices in one process: params and momentum buffers bit for
    bit, both impls; each momentum buffer a DTensor placed as its param (torch.distributed.checkpoint
    saves it shard by shard, and a fresh optimizer loads it back as saved). A replicated DTensor, no
    FSDP2 layout, is refused naming the param, before any change."""
    ranks = spawn(_sharded_muon_worker, 2, tmp_path, str(tmp_path))
    assert [rank["triton"]["local_sizes"] for rank in ranks] == [[3, 17, 1, 9, 9], [2, 16, 0, 8, 8]]
    for rank, results in enumerate(ranks):
        assert "param 0" in results["refused"] and "dim 0 of a 1-D mesh" in results["refused"], results["refused"]
        assert results.pop("replicated_unchanged") and results.pop("refused")
        for impl, result in results.items():
            assert result["moved"], f"rank {rank}, {impl}: the params did not move"
            assert result["placed"], f"rank {rank}, {impl}: a momentum buffer is not a DTensor placed as its param"
            assert result["resumed"], f"rank {rank}, {impl}: DCP did not load the momentum shards as saved"
            bad = [(index // len(SHARDED_SHAPES), index % len(SHARDED_SHAPES))
                   for index, same in enumerate(result["equal"]) if not same]
            assert not bad, f"rank {rank}, {impl}: (step, param) differing from one process: {bad}"


def test_a_copy_keeps_the_impl_and_steps_as_the_original():
    """copy.deepcopy of a Muon (torch's state alone would lose the impl option) steps like the original,
    and its compiled step runs the copy's own key."""
    import copy

    values, grads = _params_and_grads()
    params = [torch.nn.Parameter(v.clone()) for v in values]
    original = fo.Muon(params, impl="reference", lr=0.02)
    for p, g in zip(params, grads[0]):
        p.grad = g.clone()
    original.step()
    duplicate = copy.deepcopy(original)
    copied = [p for group in duplicate.param_groups for p in group["params"]]
    assert duplicate.impl == "reference" and copied[0] is not params[0]
    for p, q, g in zip(params, copied, grads[1]):
        p.grad, q.grad = g.clone(), g.clone()
    original.step()
    torch._dynamo.reset()
    torch.compile(duplicate.step, fullgraph=True, backend="eager")()
    for p, q in zip(params, copied):
        assert torch.equal(p, q) and torch.equal(original.state[p]["momentum_buffer"],
                                                 duplicate.state[q]["momentum_buffer"])


def _params_and_grads(seed=0, steps=3):
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=generator) for shape in [(17, 33), (33, 17)]]
    grads = [[torch.randn(v.shape, generator=generator) for v in values] for _ in range(steps)]
    return values, grads


@pytest.mark.parametrize("impl", IMPLS)
def test_grad_scaler_skips_an_overflow_step_whole_and_unscales_the_others(impl):
    """scaler.scale(loss).backward(); scaler.step(opt); scaler.update() over three steps, the second's
    gradient holding an inf: that step leaves params and momentum as they were and halves the scale,
    and the other two equal the unscaled run bit for bit. As torch.optim.Muon, fo.Muon does not take the
    scale into its step: GradScaler unscales the gradients and skips the step itself."""
    assert not getattr(fo.Muon, "_step_supports_amp_scaling", False)
    assert not getattr(torch.optim.Muon, "_step_supports_amp_scaling", False)
    values, grads = _params_and_grads()
    plain_params = [torch.nn.Parameter(v.clone()) for v in values]
    plain = fo.Muon(plain_params, impl=impl, lr=0.02)
    for index in (0, 2):
        for p, g in zip(plain_params, grads[index]):
            p.grad = g.clone()
        plain.step()

    params = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = fo.Muon(params, impl=impl, lr=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    for index, step_grads in enumerate(grads):
        if index == 1:
            step_grads = [g.clone() for g in step_grads]
            step_grads[1][4, 2] = float("inf")
            before = [p.detach().clone() for p in params] + [optimizer.state[p]["momentum_buffer"].clone()
                                                              for p in params]
        loss = sum((p * g).sum() for p, g in zip(params, step_grads))  # ∂loss/∂p = g
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if index == 1:
            after = [p.detach() for p in params] + [optimizer.state[p]["momentum_buffer"] for p in params]
            assert all(torch.equal(a, b) for a, b in zip(after, before)), "the overflow step changed something"
            assert scaler.get_scale() == 2.0 ** 9
    for p, q in zip(params, plain_params):
        assert torch.equal(p, q), "the scaled run differs from the unscaled one"
        assert torch.equal(optimizer.state[p]["momentum_buffer"], plain.state[q]["momentum_buffer"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lr", ["tensor", "float"])
def test_compiled_step_is_one_graph_and_never_recompiles_as_the_lr_changes(lr, impl):
    """torch.compile(optimizer.step, fullgraph=True) from a cold start (the state made inside the op),
    the lr changed before each step (a tensor by fill_, or a float): one compilation, and the steps
    equal eager ones bit for bit."""
    values, grads = _params_and_grads(steps=5)
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        params = [torch.nn.Parameter(v.clone()) for v in values]
        optimizer = fo.Muon(params, lr=torch.tensor(0.02) if lr == "tensor" else 0.02, impl=impl)
        counter = CompileCounter()
        step = torch.compile(optimizer.step, fullgraph=True, backend=counter) if compiled else optimizer.step
        for index, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            if lr == "tensor":
                optimizer.param_groups[0]["lr"].fill_(0.02 / (1 + index))
            else:
                optimizer.param_groups[0]["lr"] = 0.02 / (1 + index)
            step()
        runs.append((params, optimizer, counter))
    (eager, eager_optimizer, _), (params, optimizer, counter) = runs
    assert counter.frame_count == 1, f"{counter.frame_count} compilations over {len(grads)} steps"
    for p, q in zip(params, eager):
        assert torch.equal(p, q), "compiled and eager params differ"
        assert torch.equal(optimizer.state[p]["momentum_buffer"], eager_optimizer.state[q]["momentum_buffer"])


def test_a_compiled_training_step_traces_the_step_and_keeps_its_graphs():
    """Forward, backward, step and zero_grad in one compiled function: the step is traced as the op,
    dynamo's only breaks are torch's own (backward, Optimizer.zero_grad), and the compiled frames stay
    as many while the lr tensor changes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.Tanh(), torch.nn.Linear(16, 4, bias=False))
    optimizer = fo.Muon(model.parameters(), lr=torch.tensor(0.02), impl="triton")
    inputs, targets = torch.randn(32, 8), torch.randn(32, 4)

    def train_step():
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    train_step()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(train_step)()
    assert any("triton_optim.step" in str(graph.graph) for graph in explanation.graphs), "the step was not traced"
    for reason in explanation.break_reasons:
        assert "Tensor.backward()" in reason.reason or "Optimizer.zero_grad" in reason.reason, reason.reason
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(train_step, backend=counter)
    frames = []
    for index in range(4):
        compiled()
        optimizer.param_groups[0]["lr"].fill_(0.02 / (2 + index))
        frames.append(counter.frame_count)
    assert frames == [frames[0]] * 4, f"compiled frames per step: {frames}"
