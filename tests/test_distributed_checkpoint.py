"""Quantized state on FSDP2 shards: the same codes on any mesh, and through torch.distributed.checkpoint.

Several gloo processes on the CPU (``tests.test_distributed.spawn``), the kernels under the
interpreter. The params are FSDP2's (``fully_shard``: DTensors split along dim 0, torch.chunk's way);
their gradients are set, not computed, from one global tensor per step, so that every mesh steps the
same global gradients bit for bit (a backward's averaging over ranks would round differently).
"""
import math

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from fusedoptim import optim
from fusedoptim.optim.quantization import FORMATS, scale_name
from fusedoptim.optim.registry import RULES
from tests.test_amp import hyper
from tests.test_distributed import spawn

# Rows of 256 elements: a whole number of blocks at int8 (256) and int4 (128), so every shard starts on
# a block. 5 rows split 5 (1 rank), 3/2, 2/2/1 and 2/2/1/0 (an empty shard); 4 rows 2/2, 2/1/1, 1/1/1/1.
ALIGNED = {"uneven": (5, 256), "even": (4, 256)}
# Rows that are no whole number of blocks: a bias's 7 elements (4/3 on 2 ranks, 2/2/2/1 on 4), and one
# row of 7 (rank 1 has an empty shard).
UNALIGNED = {"bias": (7,), "row": (1, 7)}
RUNS = ((torch.float32, dict(state_dtype="int8")), (torch.bfloat16, dict(state_dtype="int8", master_weight_bits=24)),
        (torch.float32, dict(state_dtype="int4")))


class Params(torch.nn.Module):
    def __init__(self, shapes, dtype, nonnegative):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        for name, shape in shapes.items():
            value = torch.randn(shape, generator=generator)
            self.register_parameter(name, torch.nn.Parameter((value.abs() if nonnegative else value).to(dtype)))


def _runs():
    """(rule, dtype, options) of every rule that keeps a state, in each quantized run: those with a kernel
    (which steps FSDP2's shards), of dense gradients (FSDP2's) and quantizable states."""
    return [(rule, dtype, options) for rule in RULES.values() if rule.state_names(hyper(rule))
            and rule.has_kernel and not rule.only_sparse_gradients and rule.quantized_states
            for dtype, options in RUNS]


def _mesh_runs():
    """``_runs`` with the fused impl, and with the reference where it steps shards (no sum over a
    whole tensor at its test values: ``rule.sums_for`` is empty; caution's exists only with cautious=True)."""
    return [(rule, dtype, {**options, "impl": impl}) for rule, dtype, options in _runs()
            for impl in ("triton", "reference") if impl == "triton" or not rule.sums_for(hyper(rule))]


def _name(rule, dtype, options):
    return f"{rule.name} {str(dtype)[6:]} {' '.join(f'{k}={v}' for k, v in options.items())}"


def _model_and_optimizer(rule, dtype, options, shapes, sharded, dim=0):
    """``dim``: the dimension FSDP2 splits the matrices on (fully_shard's shard_placement_fn)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    model = Params(shapes, dtype, rule.nonnegative_params)
    if sharded:
        fully_shard(model, shard_placement_fn=lambda p: Shard(dim if p.dim() > dim else 0))
    groups = rule.param_groups(model) if rule.param_groups is not None else list(model.parameters())
    # A learned lr (SGDHD's α) is a tensor from its first step on; given as one, a fresh optimizer's state
    # dict, which dcp.load fills, holds a tensor where the checkpoint has one (docs/distributed.md).
    learned = dict(lr=torch.tensor(hyper(rule)["lr"])) if rule.learns_lr else {}
    return model, getattr(optim, rule.name)(groups, **{"impl": "triton", **hyper(rule), **options, **learned})


def _step(model, optimizer, step):
    """One step on this step's global gradients: each rank's shard of the same tensors."""
    for index, p in enumerate(model.parameters()):
        generator = torch.Generator().manual_seed(1000 * step + index)
        gradient = torch.randn(p.shape, generator=generator).to(p.dtype)
        p.grad = distribute_tensor(gradient, p.device_mesh, p.placements) if isinstance(p, DTensor) else gradient
    optimizer.step()
    optimizer.zero_grad()


def _global(model, optimizer, rule, options) -> dict:
    """Every param and every state of the optimizer, whole: each DTensor of ``state_dict()`` gathered
    (codes and scales of the "rows" form are the whole tensor's blocks); an aligned whole tensor's
    quantized states shaped as the rows form is; an unaligned param's, stepped whole, are whole."""
    result = {}
    saved = optimizer.state_dict()
    fmt = FORMATS[options["state_dtype"]]
    # state_dict() numbers the params in the order of the param groups (Tiger's put biases apart)
    index_of = {id(p): index for index, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    for name, p in model.named_parameters():
        result[name] = (p.full_tensor() if isinstance(p, DTensor) else p.detach()).clone()
        for state_name, value in saved["state"].get(index_of[id(p)], {}).items():
            value = (value.full_tensor() if isinstance(value, DTensor) else value).clone()  # one rank: its storage
            rows_form = name in ALIGNED and not isinstance(p, DTensor)
            if rows_form and (state_name.endswith("_scale") or fmt.bits == 4 and value.dtype == torch.uint8):
                value = value.view(p.shape[0], -1)
            result[f"{name}.{state_name}"] = value
    return result


STEPS = 3


def _mesh_worker(rank, world_size, directory):
    """Every rule with a state, int8 (fp32 params; bf16 with 24-bit masters) and int4, fused and
    reference (``_mesh_runs``): three steps on
    FSDP2 shards of this world, everything gathered whole and saved by rank 0; on one rank, the same
    on whole tensors (no FSDP2) too."""
    results = {}
    for rule, dtype, options in _mesh_runs():
        run = _name(rule, dtype, options)
        for sharded in (True, False) if world_size == 1 else (True,):
            model, optimizer = _model_and_optimizer(rule, dtype, options, {**ALIGNED, **UNALIGNED}, sharded)
            for step in range(STEPS):
                _step(model, optimizer, step)
            tensors = _global(model, optimizer, rule, options)
            if rank == 0:
                torch.save(tensors, f"{directory}/{run}-{world_size if sharded else 'whole'}.pt")
        results[run] = True
    for rule, dtype, options in SPLIT_ON_DIM_1 if world_size == 2 else ():  # FSDP2 splits dim 1 evenly only
        model, optimizer = _model_and_optimizer(rule, dtype, options, ALIGNED, True, dim=1)
        for step in range(STEPS):
            _step(model, optimizer, step)
        placements = {str(p.placements) for p in model.parameters()}
        tensors = _global(model, optimizer, rule, options)
        if rank == 0:
            torch.save(dict(tensors=tensors, placements=placements),
                       f"{directory}/{_name(rule, dtype, options)}-{world_size}-dim1.pt")
    return results


SPLIT_ON_DIM_1 = [(RULES[name], torch.float32, dict(state_dtype=state_dtype, impl="triton"))
                  for name in ("AdamW", "Adagrad") for state_dtype in ("int8", "int4")]


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("meshes")
    for world_size in (1, 2, 3):  # each spawn its own rendezvous
        spawn(_mesh_worker, world_size, tmp_path_factory.mktemp(f"ranks{world_size}"), str(directory))
    return directory


def test_the_same_global_gradients_make_the_same_codes_and_scales_on_1_2_and_3_ranks(meshes):
    """Params whose rows are whole quantization blocks: every code and scale of every state, every
    param and master residual, after three steps, are the same bit for bit on whole tensors and on
    FSDP2 meshes of 1, 2 and 3 ranks (shards of 5, 3/2 and 2/2/1 rows; 4, 2/2 and 2/1/1), for every
    rule that keeps a state, int8 and int4. The blocks are the whole tensor's, and the random draws of
    the stochastically rounded codes (Adagrad's sum, EGStepSize's step sizes) are keyed by an element's
    index in the whole param, not in its shard. Rules that sum over a tensor (Tiger's RMS(θ), SGDHD's
    ⟨g, g_prev⟩) add their shards' partial sums in another order on each mesh; their params (and θ's
    residual) may differ in the last bits, their states' codes and scales (made from the gradients)
    may not. The reference (for the rules it steps on shards) makes the same codes as it does on whole
    tensors too."""
    for rule, dtype, options in _mesh_runs():
        run = _name(rule, dtype, options)
        whole = torch.load(meshes / f"{run}-whole.pt")
        assert any(name.endswith("_scale") for name in whole), f"{run}: no quantized state"
        for world_size in (1, 2, 3):
            sharded = torch.load(meshes / f"{run}-{world_size}.pt")
            assert sorted(sharded) == sorted(whole), f"{run}, {world_size} ranks: other states"
            for name, value in whole.items():
                _assert_same(rule, name, sharded[name], value, f"{run}, {world_size} ranks, against whole tensors")


def _assert_same(rule, name, got, expected, where):
    """Bit for bit; θ (and its master residual, θ's low bits) within fp32 rounding for a rule that sums
    over a tensor (``rule.sums_for``), whose shards' partial sums add in another order on each mesh; so
    too a state the row declares written from its sums (``State.from_sums``: LARS's momentum), its scales
    within fp32 rounding and its codes differing in at most 1 % of the elements."""
    sums = rule.sums_for(hyper(rule))
    if ("." not in name or name.endswith(".master_residual")) and sums:
        if "." not in name:
            torch.testing.assert_close(got, expected, msg=f"{where}: {name}")
        return
    state = name.split(".", 1)[-1].removesuffix("_scale")
    if sums and any(spec.name == state and spec.from_sums for spec in rule.states):
        if name.endswith("_scale"):
            torch.testing.assert_close(got, expected, msg=f"{where}: {name}")
        else:
            apart = (got.view(torch.uint8).int() - expected.view(torch.uint8).int()).abs()
            assert got.dtype == expected.dtype and apart.count_nonzero() <= max(1, expected.numel() // 100), \
                f"{where}: {name} differs in {apart.count_nonzero().item()} of {expected.numel()} codes"
        return
    assert got.dtype == expected.dtype and torch.equal(got, expected), \
        f"{where}: {name} differs ({(got.float() != expected.float()).sum().item()} of {expected.numel()} elements)"


CHECKPOINT_STEP, LAST_STEP = 3, 5


def _dcp_worker(rank, world_size, directory, resume):
    """Every rule with a state, int8 (with and without 24-bit masters) and int4, on FSDP2 shards of
    aligned and unaligned params. Without ``resume``: five steps, a checkpoint after the third
    (get_state_dict, dcp.save), everything gathered at the end. With it: a fresh model and optimizer
    load that checkpoint (dcp.load, set_state_dict) and take the fourth and fifth steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    results = {}
    for rule, dtype, options in _runs():
        run = _name(rule, dtype, options)
        checkpoint = f"{directory}/{run}"
        model, optimizer = _model_and_optimizer(rule, dtype, options, {**ALIGNED, **UNALIGNED}, True)
        first = 0
        if resume:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optimizer": optimizer_state}
            dcp.load(state, checkpoint_id=checkpoint)
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
            first = CHECKPOINT_STEP
            loaded = _global(model, optimizer, rule, options)
        for step in range(first, LAST_STEP):
            if step == CHECKPOINT_STEP and not resume:
                model_state, optimizer_state = get_state_dict(model, optimizer)
                dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
                saved = _global(model, optimizer, rule, options)
            _step(model, optimizer, step)
        tensors = _global(model, optimizer, rule, options)
        if rank == 0:
            torch.save(dict(last=tensors, at_checkpoint=loaded if resume else saved),
                       f"{directory}/{run}-{world_size if resume else 'saved'}.pt")
        results[run] = True
    return results


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint saved on 2 ranks, resumed on 2, 1 and 4."""
    directory = tmp_path_factory.mktemp("dcp")
    spawn(_dcp_worker, 2, tmp_path_factory.mktemp("save"), str(directory), False)
    for world_size in (2, 1, 4):
        spawn(_dcp_worker, world_size, tmp_path_factory.mktemp(f"resume{world_size}"), str(directory), True)
    return directory


def _differences(got: dict, expected: dict) -> list:
    return [name for name, value in expected.items()
            if got[name].dtype != value.dtype or not torch.equal(got[name], value)]


def test_quantized_states_saved_by_dcp_on_2_ranks_resume_bit_for_bit_on_2(checkpoints):
    """get_state_dict + dcp.save after three steps, then in fresh processes dcp.load + set_state_dict
    and two more steps: the params and every state (codes, scales, master residuals, steps) equal
    the uninterrupted run's bit for bit, for uneven (3/2 rows), even (2/2), unaligned (a bias 4/3) and
    empty (1/0) shards, every rule with a state, int8, int8 with 24-bit masters, int4. The checkpoint
    holds weight matrices' states in the rows form (a scale per block, int4 codes two a byte), the
    unaligned ones' whole (they are stepped whole, and their states are the same on every rank)."""
    for rule, dtype, options in _runs():
        run = _name(rule, dtype, options)
        saved = torch.load(checkpoints / f"{run}-saved.pt")
        resumed = torch.load(checkpoints / f"{run}-2.pt")
        fmt = FORMATS[options["state_dtype"]]
        for name, value in saved["at_checkpoint"].items():  # what DCP saved, gathered: each state's form
            param, _, state = name.partition(".")
            shape = {**ALIGNED, **UNALIGNED}[param]
            numel = math.prod(shape)
            if state.endswith("_scale"):  # rows: a scale per block of a row; stepped whole: the whole tensor's
                assert value.shape == ((shape[0], shape[1] // fmt.block) if param in ALIGNED
                                       else (-(-numel // fmt.block),)), (run, name, value.shape)
            elif value.dtype == torch.uint8:  # int4 codes: two a byte, in rows or whole
                assert value.shape == ((shape[0], shape[1] // 2) if param in ALIGNED else (-(-numel // 2),)), \
                    (run, name, value.shape)
        assert not _differences(resumed["at_checkpoint"], saved["at_checkpoint"]), \
            f"{run}: loaded on 2 ranks, differs from what was saved: {_differences(resumed['at_checkpoint'], saved['at_checkpoint'])}"
        assert not _differences(resumed["last"], saved["last"]), \
            f"{run}: resumed on 2 ranks, differs from the uninterrupted run: {_differences(resumed['last'], saved['last'])}"


@pytest.mark.parametrize("world_size", [1, 4])
def test_a_checkpoint_of_2_ranks_loads_on_1_and_4_ranks_and_steps_as_the_uninterrupted_run(checkpoints, world_size):
    """The same checkpoint loaded on 1 rank (whole shards) and on 4 (2/2/1/0 rows, an empty shard):
    the codes and scales of every state are the same on any mesh (the rows form reshards them, the
    unaligned params' are whole), so what loads is what was saved, and the two steps after equal the
    uninterrupted 2-rank run's bit for bit (θ within fp32 rounding for Tiger and SGDHD, whose sums
    over shards add in another order)."""
    for rule, dtype, options in _runs():
        run = _name(rule, dtype, options)
        saved = torch.load(checkpoints / f"{run}-saved.pt")
        resumed = torch.load(checkpoints / f"{run}-{world_size}.pt")
        assert sorted(resumed["last"]) == sorted(saved["last"]), f"{run} on {world_size} ranks: other states"
        for name, expected in saved["at_checkpoint"].items():
            assert torch.equal(resumed["at_checkpoint"][name], expected), \
                f"{run} on {world_size} ranks: {name} loaded otherwise than saved"
        for name, expected in saved["last"].items():
            _assert_same(rule, name, resumed["last"][name], expected,
                         f"{run}, resumed on {world_size} ranks, against the uninterrupted 2-rank run")


def _other_format_worker(rank, world_size, directory):
    """AdamW int8 on FSDP2 shards of weight matrices: a checkpoint after one step; then fresh optimizers
    with other state formats load it. Into float states dcp.load reads it without a complaint (int8
    codes cast to floats, their scales left in the checkpoint): set_state_dict must refuse. Into int4,
    whose codes and scales have other shapes, dcp.load itself refuses."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rule = RULES["AdamW"]
    model, optimizer = _model_and_optimizer(rule, torch.float32, dict(state_dtype="int8"), ALIGNED, True)
    _step(model, optimizer, 0)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=f"{directory}/int8")
    messages = {}
    for state_dtype in (None, torch.bfloat16, "int4"):
        model, optimizer = _model_and_optimizer(rule, torch.float32, dict(state_dtype=state_dtype), ALIGNED, True)
        _step(model, optimizer, 0)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        try:
            dcp.load(state, checkpoint_id=f"{directory}/int8")
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
            messages[str(state_dtype)] = None
        except (ValueError, CheckpointException) as error:  # set_state_dict's; dcp.load's (a BaseException)
            messages[str(state_dtype)] = str(error)
    return messages


def test_a_quantized_checkpoint_read_by_dcp_into_another_state_format_is_refused(tmp_path):
    for rank, messages in enumerate(spawn(_other_format_worker, 2, tmp_path, str(tmp_path))):
        for state_dtype in ("None", "torch.bfloat16"):
            message = messages[state_dtype]
            assert message is not None, f"rank {rank}: int8 codes loaded as the values of state_dtype={state_dtype}"
            assert "saved as int8 codes" in message and f"state_dtype={state_dtype}" in message, message
        assert messages["int4"] is not None and "Size mismatch" in messages["int4"], messages["int4"]


def _legacy_worker(rank, world_size):
    """A per-rank checkpoint from before unaligned params were stepped whole (no state_format in its
    groups; each rank's codes and scales quantized on its shard's own blocks, its residual the
    shard's), as the docs then advised saving quantized states: every rank loads its own, the shards'
    values are gathered and quantized whole."""
    from fusedoptim.optim.quantization import dequantize, new_codes, quantize, scale_numel
    from fusedoptim.optim.saved_states import FORMAT_KEY
    from fusedoptim.optim.shards import flat_offset, local

    rule, options = RULES["AdamW"], dict(state_dtype="int8", master_weight_bits=24)
    model, optimizer = _model_and_optimizer(rule, torch.bfloat16, options, UNALIGNED, True)
    for step in range(2):
        _step(model, optimizer, step)
    kinds = {spec.name: spec.kind for spec in rule.states if spec.name in optimizer.state[model.bias]}
    whole_values, legacy = {}, optimizer.state_dict()
    for group in legacy["param_groups"]:
        del group[FORMAT_KEY]
    for index, p in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        state, shard, first = optimizer.state[p], local(p), flat_offset(p)
        saved = dict(legacy["state"][index])
        for name, kind in kinds.items():
            values = dequantize(state[name], state[name + "_scale"], kind, torch.empty(p.shape))
            whole_values[(index, name)] = values
            part = values.view(-1)[first:first + shard.numel()].view_as(shard)
            codes, scales = new_codes(shard, "int8"), torch.empty(scale_numel(shard.numel()))
            quantize(part, kind, codes, scales)
            saved[name], saved[name + "_scale"] = codes, scales
        saved["master_residual"] = state["master_residual"].view(-1)[first:first + shard.numel()].view_as(shard).clone()
        legacy["state"][index] = saved
    fresh_model, fresh = _model_and_optimizer(rule, torch.bfloat16, options, UNALIGNED, True)
    fresh.load_state_dict(legacy)
    errors, residuals_equal = [], True
    for index, (p, q) in enumerate(zip((p for g in optimizer.param_groups for p in g["params"]),
                                       (p for g in fresh.param_groups for p in g["params"]))):
        residuals_equal &= torch.equal(fresh.state[q]["master_residual"], optimizer.state[p]["master_residual"])
        for name, kind in kinds.items():
            loaded = dequantize(fresh.state[q][name], fresh.state[q][name + "_scale"], kind, torch.empty(q.shape))
            expected = whole_values[(index, name)]
            errors.append(((loaded - expected).abs().max() / expected.abs().max()).item())
    _step(fresh_model, fresh, 2)
    return dict(errors=errors, residuals_equal=residuals_equal,
                finite=all(torch.isfinite(p.full_tensor()).all().item() for p in fresh_model.parameters()))


def test_a_per_rank_checkpoint_of_shard_quantized_states_loads_whole(tmp_path):
    """Each quantized state of the old per-rank checkpoint, gathered and quantized whole, reads within
    two code steps of the saved values (quantized twice, on the shard's blocks and on the whole
    tensor's: 1/127 of the block's largest each); the residuals come back whole bit for bit; a step
    after the load stays finite."""
    for rank, result in enumerate(spawn(_legacy_worker, 2, tmp_path)):
        assert result["residuals_equal"], f"rank {rank}: the gathered residual differs from the whole one"
        assert result["errors"] and max(result["errors"]) <= 2 / 127, f"rank {rank}: {result['errors']}"
        assert result["finite"], f"rank {rank}: the step after the load is not finite"


def test_matrices_split_along_their_second_dimension_are_stepped_whole_as_one_process_steps_them(meshes):
    """FSDP2 asked to split the matrices along dim 1 (shard_placement_fn): a shard is then no range
    of the whole tensor's blocks, so those params are stepped whole on every rank, and every code and
    scale (AdamW; Adagrad's stochastically rounded sum), every param, equals the whole tensors' run."""
    for rule, dtype, options in SPLIT_ON_DIM_1:
        run = _name(rule, dtype, options)
        whole = torch.load(meshes / f"{run}-whole.pt")
        for world_size in (2,):
            result = torch.load(meshes / f"{run}-{world_size}-dim1.pt")
            assert result["placements"] == {"(Shard(dim=1),)"}, result["placements"]
            for name, value in result["tensors"].items():
                if name.split(".")[-1].endswith("_scale") or value.dtype == torch.uint8:
                    value = value.view(whole[name].shape)  # stepped whole: kept flat, not in rows
                _assert_same(rule, name, value, whole[name], f"{run} split on dim 1, {world_size} ranks")
