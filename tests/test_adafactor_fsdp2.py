"""fo.Adafactor on FSDP2 shards (``fully_shard``: DTensors split along dim 0), on 2 gloo CPU ranks,
against the same optimizer on whole tensors in each process, fed the same gradients.

A matrix's rows lie whole in a shard (its row statistics too), but its column sums Σ_i g², its Σ R_i
and every Σθ², Σu² span the shards: the fused step sums them over the ranks. The params are a 7 × 8
matrix (rows 4/3), a 3 × 4 × 5 stack (matrices 2/1: both statistics local), a 7-vector (4/3) and a
1 × 7 row (1/0: rank 1's shard is empty). Three steps: the first sets the statistics to G², the next
ones lerp them; weight decay and the default clipping (d = 1, which the first steps hit) read Σθ², Σu².
"""
import pytest
import torch
from torch.distributed.tensor import DTensor, distribute_tensor

import fusedoptim as fo
from tests.test_distributed import spawn

SHAPES = {"matrix": (7, 8), "stack": (3, 4, 5), "vector": (7,), "row": (1, 7)}
STEPS = 3
OPTIONS = dict(lr=0.05, weight_decay=0.1)


def _model(sharded):
    from torch.distributed.fsdp import fully_shard

    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Module()
    for name, shape in SHAPES.items():
        model.register_parameter(name, torch.nn.Parameter(torch.randn(shape, generator=generator)))
    if sharded:
        fully_shard(model)
    return model


def _set_gradients(model, step):
    """The same whole gradients on every rank and in the whole run; each rank takes its shard's part."""
    generator = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        grad = torch.randn(p.shape, generator=generator)
        p.grad = distribute_tensor(grad, p.device_mesh, p.placements) if isinstance(p, DTensor) else grad


def _whole(value):
    return value.full_tensor() if isinstance(value, DTensor) else value


def _differences(model, optimizer, whole_model, whole_optimizer):
    """The largest |difference| (and the largest magnitude) of the params and of every state, gathered
    whole, from the run on whole tensors; None where a state's names differ."""
    worst, scale = 0.0, 0.0
    for (name, p), q in zip(model.named_parameters(), whole_model.parameters()):
        state, whole_state = optimizer.state[p], whole_optimizer.state[q]
        if set(state) != set(whole_state):
            return None
        pairs = [(_whole(p.detach()), q.detach())] + [(_whole(state[k]), whole_state[k]) for k in whole_state]
        for a, b in pairs:
            worst = max(worst, (a - b).abs().max().item() if b.numel() else 0.0)
            scale = max(scale, b.abs().max().item() if b.numel() else 0.0)
    return worst, scale


def _placements(model, optimizer):
    return {name: {k: [str(placement) for placement in v.placements] if isinstance(v, DTensor) else "plain"
                   for k, v in optimizer.state[p].items()} for name, p in model.named_parameters()}


def _fsdp2_worker(rank, world_size, directory):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, whole_model = _model(True), _model(False)
    optimizer = fo.Adafactor(model.parameters(), impl="auto", **OPTIONS)
    whole_optimizer = fo.Adafactor(whole_model.parameters(), impl="triton", **OPTIONS)
    differences = []
    for step in range(STEPS):
        if step == STEPS - 1:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=f"{directory}/checkpoint")
        _set_gradients(model, step)
        _set_gradients(whole_model, step)
        chosen = optimizer.chosen_impl()
        optimizer.step()
        whole_optimizer.step()
        differences.append(_differences(model, optimizer, whole_model, whole_optimizer))

    # A fresh model and optimizer resume from the checkpoint (DCP reads each rank's rows of row_var,
    # the replicated col_var whole) and take the last step: the uninterrupted run's, bit for bit.
    resumed_model = _model(True)
    resumed = fo.Adafactor(resumed_model.parameters(), impl="triton", **OPTIONS)
    model_state, optimizer_state = get_state_dict(resumed_model, resumed)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=f"{directory}/checkpoint")
    set_state_dict(resumed_model, resumed, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    _set_gradients(resumed_model, STEPS - 1)
    resumed.step()
    resumes = all(
        torch.equal(p.to_local(), q.to_local()) and set(optimizer.state[p]) == set(resumed.state[q])
        and all(torch.equal(_whole(optimizer.state[p][k]), _whole(resumed.state[q][k])) for k in optimizer.state[p])
        for p, q in zip(model.parameters(), resumed_model.parameters()))

    # The reference steps whole tensors: refused on shards, before anything changes.
    refused_model = _model(True)
    reference = fo.Adafactor(refused_model.parameters(), impl="reference", **OPTIONS)
    _set_gradients(refused_model, 0)
    before = [p.to_local().clone() for p in refused_model.parameters()]
    try:
        reference.step()
        refusal = ""
    except RuntimeError as error:
        refusal = str(error)
    unchanged = not reference.state and all(torch.equal(a, p.to_local()) for a, p in zip(before, refused_model.parameters()))

    quantized = {state_dtype: _quantized_run(state_dtype) for state_dtype in ("int8", "int4")}

    return dict(chosen=chosen, differences=differences, placements=_placements(model, optimizer),
                col_var=optimizer.state[model.matrix]["col_var"].to_local().tolist(),
                local_rows={name: p.to_local().shape[0] for name, p in model.named_parameters()},
                resumes=resumes, refusal=refusal, quantized=quantized,
                unchanged=unchanged)


def _quantized_run(state_dtype):
    """Two steps with a quantized variance on shards and on whole tensors: whether the vector's codes
    and scales are whole plain tensors equal to the whole run's, and the largest difference (and
    magnitude) of the params and float states, as ``_differences``."""
    model, whole_model = _model(True), _model(False)
    optimizer = fo.Adafactor(model.parameters(), impl="triton", state_dtype=state_dtype, **OPTIONS)
    whole_optimizer = fo.Adafactor(whole_model.parameters(), impl="triton", state_dtype=state_dtype, **OPTIONS)
    results = []
    for step in range(2):
        _set_gradients(model, step)
        _set_gradients(whole_model, step)
        optimizer.step()
        whole_optimizer.step()
        worst, scale, codes_equal = 0.0, 0.0, True
        for p, q in zip(model.parameters(), whole_model.parameters()):
            state, whole_state = optimizer.state[p], whole_optimizer.state[q]
            pairs = [(_whole(p.detach()), q.detach())]
            for key, value in whole_state.items():
                if key in ("variance", "variance_scale") and p.dim() <= 1:
                    codes_equal = codes_equal and not isinstance(state[key], DTensor) and torch.equal(state[key], value)
                else:
                    pairs.append((_whole(state[key]), value))
            for a, b in pairs:
                worst = max(worst, (a - b).abs().max().item() if b.numel() else 0.0)
                scale = max(scale, b.abs().max().item() if b.numel() else 0.0)
        results.append((codes_equal, worst, scale))
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    directory = tmp_path_factory.mktemp("adafactor-fsdp2")
    return spawn(_fsdp2_worker, 2, directory, str(directory))


def test_fsdp2_shards_step_as_the_whole_tensors(ranks):
    """Every step, on both ranks: the params and every state, gathered whole, equal the whole run's to
    fp32 rounding (the partial sums are added in another order than one process adds them)."""
    assert ranks[0]["local_rows"] == {"matrix": 4, "stack": 2, "vector": 4, "row": 1}
    assert ranks[1]["local_rows"] == {"matrix": 3, "stack": 1, "vector": 3, "row": 0}
    for rank, result in enumerate(ranks):
        assert result["chosen"] == "triton", f"rank {rank}: impl='auto' took {result['chosen']} for the shards"
        for step, difference in enumerate(result["differences"], 1):
            assert difference is not None, f"rank {rank} step {step}: the states' names differ from the whole run's"
            worst, scale = difference
            assert worst <= 2e-6 * max(1.0, scale), f"rank {rank} step {step}: |sharded − whole| = {worst:.3e}"


def test_fsdp2_statistics_are_placed_as_their_shards_and_column_statistics_replicated(ranks):
    """row_var split as its param's rows; a matrix's col_var replicated, and the same on both ranks; a
    stack's statistics split with its matrices; the variance of a vector split as the vector."""
    expected = {"matrix": {"step": "plain", "row_var": ["S(0)"], "col_var": ["R"]},
                "row": {"step": "plain", "row_var": ["S(0)"], "col_var": ["R"]},
                "stack": {"step": "plain", "row_var": ["S(0)"], "col_var": ["S(0)"]},
                "vector": {"step": "plain", "variance": ["S(0)"]}}
    for result in ranks:
        assert result["placements"] == expected
    assert ranks[0]["col_var"] == ranks[1]["col_var"], "the ranks' column statistics differ"


def test_fsdp2_state_round_trips_torch_distributed_checkpoint(ranks):
    for rank, result in enumerate(ranks):
        assert result["resumes"], f"rank {rank}: the step after dcp.load differs from the uninterrupted one"


def test_fsdp2_reference_is_refused_before_any_change(ranks):
    for result in ranks:
        assert "impl='triton'" in result["refusal"] and "FSDP2" in result["refusal"], result["refusal"]
        assert result["unchanged"], "the refused reference step changed a param or made a state"


def test_fsdp2_quantized_variance_steps_as_one_process(ranks):
    """state_dtype='int8' and 'int4' on shards: the vector (rows of one element, no whole block) is
    stepped whole on every rank, its codes and scales whole plain tensors equal to the whole run's bit
    for bit; the params and the other states equal it to fp32 rounding, as without quantization."""
    for rank, result in enumerate(ranks):
        for state_dtype, steps in result["quantized"].items():
            for step, (codes_equal, worst, scale) in enumerate(steps, 1):
                what = f"rank {rank} {state_dtype} step {step}"
                assert codes_equal, f"{what}: the vector's codes or scales differ from the whole run's"
                assert worst <= 2e-6 * max(1.0, scale), f"{what}: |sharded − whole| = {worst:.3e}"
