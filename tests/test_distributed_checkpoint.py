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
    """(rule, dtype, options) of every rule that keeps a state, in each quantized run."""
    return [(rule, dtype, options) for rule in RULES.values() if rule.state_names(hyper(rule))
            for dtype, options in RUNS]


def _mesh_runs():
    """``_runs`` with the fused impl, and with the reference where it steps shards (no sum over a
    whole tensor: ``rule.prepare`` is None)."""
    return [(rule, dtype, {**options, "impl": impl}) for rule, dtype, options in _runs()
            for impl in ("triton", "reference") if impl == "triton" or rule.prepare is None]


def _name(rule, dtype, options):
    return f"{rule.name} {str(dtype)[6:]} {' '.join(f'{k}={v}' for k, v in options.items())}"


def _model_and_optimizer(rule, dtype, options, shapes, sharded):
    from torch.distributed.fsdp import fully_shard

    model = Params(shapes, dtype, rule.nonnegative_params)
    if sharded:
        fully_shard(model)
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
    (codes and scales of the "rows" form are the whole tensor's blocks); a whole tensor's quantized
    states shaped as the rows form is."""
    result = {}
    saved = optimizer.state_dict()
    fmt = FORMATS[options["state_dtype"]]
    # state_dict() numbers the params in the order of the param groups (Tiger's put biases apart)
    index_of = {id(p): index for index, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    for name, p in model.named_parameters():
        result[name] = (p.full_tensor() if isinstance(p, DTensor) else p.detach()).clone()
        for state_name, value in saved["state"].get(index_of[id(p)], {}).items():
            value = (value.full_tensor() if isinstance(value, DTensor) else value).clone()  # one rank: its storage
            if not isinstance(p, DTensor) and state_name in map(scale_name, rule.state_names(optimizer.param_groups[0])):
                value = value.view(p.shape[0], -1)
            elif not isinstance(p, DTensor) and fmt.bits == 4 and value.dtype == torch.uint8:
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
            model, optimizer = _model_and_optimizer(rule, dtype, options, ALIGNED, sharded)
            for step in range(STEPS):
                _step(model, optimizer, step)
            tensors = _global(model, optimizer, rule, options)
            if rank == 0:
                torch.save(tensors, f"{directory}/{run}-{world_size if sharded else 'whole'}.pt")
        results[run] = True
    return results


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
    over a tensor (``rule.reduce``), whose shards' partial sums add in another order on each mesh."""
    if ("." not in name or name.endswith(".master_residual")) and rule.reduce is not None:
        if "." not in name:
            torch.testing.assert_close(got, expected, msg=f"{where}: {name}")
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
    unaligned ones' in the elements form."""
    for rule, dtype, options in _runs():
        run = _name(rule, dtype, options)
        saved = torch.load(checkpoints / f"{run}-saved.pt")
        resumed = torch.load(checkpoints / f"{run}-2.pt")
        fmt = FORMATS[options["state_dtype"]]
        for name, value in saved["at_checkpoint"].items():  # what DCP saved, gathered: each state's form
            param, _, state = name.partition(".")
            shape = {**ALIGNED, **UNALIGNED}[param]
            if state.endswith("_scale"):  # rows: a scale per block of a row; elements: one per element
                assert value.shape == ((shape[0], shape[1] // fmt.block) if param in ALIGNED else shape), (run, name)
            elif value.dtype == torch.uint8:  # int4 codes: two a byte in rows, a byte each in elements
                assert value.shape == ((shape[0], shape[1] // 2) if param in ALIGNED else shape), (run, name)
        assert not _differences(resumed["at_checkpoint"], saved["at_checkpoint"]), \
            f"{run}: loaded on 2 ranks, differs from what was saved: {_differences(resumed['at_checkpoint'], saved['at_checkpoint'])}"
        assert not _differences(resumed["last"], saved["last"]), \
            f"{run}: resumed on 2 ranks, differs from the uninterrupted run: {_differences(resumed['last'], saved['last'])}"


@pytest.mark.parametrize("world_size", [1, 4])
def test_a_checkpoint_of_2_ranks_loads_on_1_and_4_ranks_and_steps_on(checkpoints, world_size):
    """The same checkpoint loaded on 1 rank (whole shards) and on 4 (2/2/1/0 rows, an empty shard).
    Params whose rows are whole blocks: their codes and scales are the whole tensor's on any mesh, so
    what loads is what was saved, and the two steps after equal the uninterrupted 2-rank run's bit for
    bit. Unaligned params: their blocks start where the shards start, other blocks on another mesh,
    so their states are read as values and quantized again on the new blocks, and the params step on,
    finite, within a few steps' lr of the uninterrupted run; so do all params of the rules whose step
    sums over a tensor or group (Tiger, SGDHD: their states, made from the gradients, are still the
    uninterrupted run's bit for bit)."""
    for rule, dtype, options in _runs():
        run = _name(rule, dtype, options)
        fmt = FORMATS[options["state_dtype"]]
        saved = torch.load(checkpoints / f"{run}-saved.pt")
        resumed = torch.load(checkpoints / f"{run}-{world_size}.pt")
        aligned = [name for name in saved["last"] if name.split(".")[0] in ALIGNED]
        for name in aligned:
            assert torch.equal(resumed["at_checkpoint"][name], saved["at_checkpoint"][name]), \
                f"{run} on {world_size} ranks: {name} loaded otherwise than saved"
            if rule.reduce is None or "." in name and not name.endswith(".master_residual"):
                _assert_same(rule, name, resumed["last"][name], saved["last"][name],
                             f"{run}, resumed on {world_size} ranks, against the uninterrupted 2-rank run")
        lr = hyper(rule)["lr"]
        # θ of unaligned params, and of every param where a sum over the group or tensor reads them
        # (SGDHD's ⟨g, g_prev⟩ reads the unaligned params' requantized g_prev).
        for name in [*UNALIGNED, *(ALIGNED if rule.reduce is not None else ())]:
            got, expected = resumed["last"][name].float(), saved["last"][name].float()
            assert torch.isfinite(got).all(), f"{run} on {world_size} ranks: {name} not finite"
            bound = 4 * (LAST_STEP - CHECKPOINT_STEP) * float(lr) * max(1.0, expected.abs().max().item())
            assert (got - expected).abs().max().item() <= bound, \
                f"{run} on {world_size} ranks: {name} moved {(got - expected).abs().max().item():.3g} from the 2-rank run"


def _other_format_worker(rank, world_size, directory):
    """AdamW int8 on unaligned shards only (whose DCP form, one code and one scale per element shaped
    as the param, any state format shares): a checkpoint after one step; then fresh optimizers of
    int4 and of float32 states load it. dcp.load reads it into their dtypes without a complaint (int8
    codes cast to int4's bytes, or to floats beside no scales); set_state_dict must refuse."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rule = RULES["AdamW"]
    model, optimizer = _model_and_optimizer(rule, torch.float32, dict(state_dtype="int8"), UNALIGNED, True)
    _step(model, optimizer, 0)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=f"{directory}/int8")
    messages = {}
    for state_dtype in ("int4", None):
        model, optimizer = _model_and_optimizer(rule, torch.float32, dict(state_dtype=state_dtype), UNALIGNED, True)
        _step(model, optimizer, 0)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=f"{directory}/int8")
        try:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
            messages[str(state_dtype)] = None
        except ValueError as error:
            messages[str(state_dtype)] = str(error)
    return messages


def test_a_quantized_checkpoint_read_by_dcp_into_another_state_format_is_refused(tmp_path):
    for rank, messages in enumerate(spawn(_other_format_worker, 2, tmp_path, str(tmp_path))):
        for state_dtype, message in messages.items():
            assert message is not None, f"rank {rank}: int8 codes loaded into state_dtype={state_dtype}"
            assert "saved as int8 codes" in message and f"state_dtype={state_dtype!r}".replace("'None'", "None") \
                in message.replace("'None'", "None"), message
