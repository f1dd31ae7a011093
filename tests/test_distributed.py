"""Several processes on the CPU (gloo over loopback): the majority-vote DDP hook.

Each test spawns its workers with torch.multiprocessing; they inherit TRITON_INTERPRET=1 from
tests/conftest.py, so the packing and voting kernels run under the interpreter. Every worker writes
what it saw to a JSON file that the test reads back.
"""
import copy
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from fusedoptim import optim
from fusedoptim.kernels.majority_vote import majority_vote, pack_signs
from fusedoptim.optim.shards import local
from fusedoptim.optim.distributed import MajorityVoteState, majority_vote_hook
from fusedoptim.optim.quantization import COUNT_KEY, FORMATS, scale_name
from fusedoptim.optim.registry import RULES
from tests.test_amp import hyper

FEATURES, OUTPUTS, BATCH = 64, 31, 16  # 2015 params: 63 words
STEPS = 20


@pytest.mark.parametrize("numel", [1, 31, 32, 33, 5000])
@pytest.mark.parametrize("world_size", [2, 3])
def test_packed_signs_and_the_vote_match_the_formula(numel, world_size):
    """One process: bit i % 32 of word i // 32 is g_i ≥ 0, and the vote of the packed words is
    sign(Σ_r ±1), 0 on a tie, in the gradient's dtype."""
    generator = torch.Generator().manual_seed(numel)
    grads = [torch.randn(numel, generator=generator) for _ in range(world_size)]
    grads[0][0] = 0.0  # a zero gradient votes +1
    words = torch.stack([pack_signs(g) for g in grads])
    bits = ((words.long()[..., None] >> torch.arange(32)) & 1).reshape(world_size, -1)[:, :numel]
    assert torch.equal(bits.bool(), torch.stack(grads) >= 0)
    expected = torch.sign(torch.where(torch.stack(grads) >= 0, 1.0, -1.0).sum(0))
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(majority_vote(words, torch.empty(numel, dtype=dtype)).float(), expected)


def spawn(worker, world_size, tmp_path, *arguments):
    """Run ``worker(rank, world_size, tmp_path, *arguments)`` on world_size processes; each rank's JSON."""
    mp.spawn(_initialised, args=(worker, world_size, str(tmp_path), *arguments), nprocs=world_size, join=True)
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world_size)]


def _initialised(rank, worker, world_size, directory, *arguments):
    dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world_size)
    try:
        result = worker(rank, world_size, *arguments)
        with open(f"{directory}/rank{rank}.json", "w") as file:
            json.dump(result, file)
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: under pytest a worker aborted there now and then
    # ("terminate called without an active exception", SIGABRT) after its work and its file were done.
    os._exit(0)


def regression_batch(rank, step):
    """Each worker's own batch of a linear teacher with noise: the workers' gradients differ."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    teacher = torch.Generator().manual_seed(7)
    weights = 0.1 * torch.randn(FEATURES, OUTPUTS, generator=teacher)
    inputs = torch.randn(BATCH, FEATURES, generator=generator)
    return inputs, inputs @ weights + 0.1 * torch.randn(BATCH, OUTPUTS, generator=generator)


def _majority_vote_worker(rank, world_size):
    """The hook on every group size from 2 to world_size, in one spawn (starting processes is the slow
    part): each size trains its own model on the first ranks, Signum on 3 workers, SignSGD otherwise."""
    results = {}
    for size in range(2, world_size + 1):
        group = dist.new_group(list(range(size)))  # every rank takes part in making every group
        if rank < size:
            results[size] = _train_with_majority_vote(rank, size, group, "Signum" if size == 3 else "SignSGD")
        dist.barrier()
    return results


def _train_with_majority_vote(rank, world_size, group, rule_name):
    torch.manual_seed(0)  # the same initial model on every worker
    model = DistributedDataParallel(torch.nn.Linear(FEATURES, OUTPUTS), process_group=group)
    state = MajorityVoteState(process_group=group)
    model.register_comm_hook(state, majority_vote_hook)
    optimizer = getattr(optim, rule_name)(model.parameters(), lr=1e-2)

    # The vote by hand: every worker's local gradient (no_sync skips the hook), gathered in fp32.
    inputs, targets = regression_batch(rank, 0)
    with model.no_sync():
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
    local = torch.cat([p.grad.flatten() for p in model.parameters()])
    everyone = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(everyone, local, group=group)
    by_hand = torch.sign(torch.stack([torch.where(g >= 0, 1.0, -1.0) for g in everyone]).sum(0))
    model.zero_grad()
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    voted = torch.cat([p.grad.flatten() for p in model.parameters()])
    bytes_per_step = (state.bytes_sent, state.fp32_bytes)

    losses = []
    for step in range(STEPS):
        optimizer.step()
        model.zero_grad()
        inputs, targets = regression_batch(rank, step + 1)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        losses.append(loss.item())
    return dict(vote_equals_hand=torch.equal(voted, by_hand), ties=int((by_hand == 0).sum()),
                bytes_sent=bytes_per_step[0], fp32_bytes=bytes_per_step[1], numel=local.numel(),
                losses=losses, params=[p.detach().flatten().tolist() for p in model.parameters()])


def test_majority_vote_sends_a_32nd_of_the_bytes_votes_as_by_hand_and_trains(tmp_path):
    ranks = spawn(_majority_vote_worker, 4, tmp_path)
    for size in ("2", "3", "4"):
        workers = [rank[size] for rank in ranks[:int(size)]]
        for worker in workers:
            assert worker["vote_equals_hand"], f"{size} workers: the vote differs from sign(Σ_r sign(g_r)) by hand"
            # ⌈n/32⌉ int32 words against n fp32 values: 1/32 up to the last word's padding.
            assert worker["bytes_sent"] == 4 * math.ceil(worker["numel"] / 32)
            assert worker["fp32_bytes"] == 4 * worker["numel"]
            assert worker["bytes_sent"] / worker["fp32_bytes"] == pytest.approx(1 / 32, rel=0.01)
            assert worker["params"] == workers[0]["params"], "every worker applies the same vote"
        if int(size) % 2:
            assert workers[0]["ties"] == 0  # an odd number of workers never ties
        first, last = workers[0]["losses"][:5], workers[0]["losses"][-5:]
        # 20 sign steps of lr 1e-2 move a weight 0.2 at most, about the teacher's scale (0.1): the loss halves.
        assert sum(last) < 0.5 * sum(first), f"{size} workers: the loss did not fall: {first} → {last}"


class ShardedModel(torch.nn.Module):
    """Every kind of tensor Tiger tells apart, in shards of every shape: the embedding's 10 rows split
    5/5, the linear layer's 7 rows 4/3, and the head's single row leaves rank 1 an empty shard."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 8)
        self.linear = torch.nn.Linear(8, 7)
        self.norm = torch.nn.LayerNorm(7)
        self.head = torch.nn.Linear(7, 1)

    def forward(self, tokens):
        return self.head(self.norm(torch.tanh(self.linear(self.embedding(tokens))))).pow(2).mean()


SHARDED_STEPS = 3
# FSDP2 reduce-scatters dense gradients, and the fused kernel steps its shards: the rules that take both
# (SparseAdam, of sparse gradients and no kernel, cannot run here).
FSDP2_RULES = [rule for rule in RULES.values() if rule.has_kernel and not rule.only_sparse_gradients]
# and caution's mean over a whole param (Sum.mean), whose shards' parts add up before the divide by its numel
FSDP2_RUNS = [(rule.name, rule, {}) for rule in FSDP2_RULES] + [
    (f"{name} cautious", RULES[name], {"cautious": True}) for name in ("AdamW", "Tiger")]


def _model_and_optimizer(rule, sharded, dtype=torch.float32, **options):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = ShardedModel().to(dtype)
    if rule.nonnegative_params:
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
    if sharded:
        for module in (model.embedding, model.linear, model.norm, model.head, model):
            fully_shard(module)
    return model, getattr(optim, rule.name)(_param_groups(rule, model), impl="triton", **{**hyper(rule), **options})


def _sharded_worker(rank, world_size):
    """Every rule, sharded by FSDP2 over the ranks and whole in this process, on the same batches:
    FSDP2 averages identical gradients, so the two runs see the same gradient."""
    results = {}
    for run, rule, options in FSDP2_RUNS:
        runs = []
        for sharded in (True, False):
            model, optimizer = _model_and_optimizer(rule, sharded, **options)
            for step in range(SHARDED_STEPS):
                tokens = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(step))
                model(tokens).backward()
                optimizer.step()
                optimizer.zero_grad()
            params = [p.full_tensor() if sharded else p.detach() for p in model.parameters()]
            local_sizes = [p.to_local().numel() if sharded else p.numel() for p in model.parameters()]
            runs.append((params, local_sizes, optimizer))
        (sharded_params, local_sizes, sharded_optimizer), (whole_params, _, _) = runs
        state_sizes = [local(value).numel() for state in sharded_optimizer.state.values()
                       for value in state.values() if value.dim() > 0]
        results[run] = dict(
            max_difference=max((a - b).abs().max().item() for a, b in zip(sharded_params, whole_params)),
            max_scale=max(b.abs().max().item() for b in whole_params),
            moved=any(not torch.equal(a, b) for a, b in zip(whole_params, _model_and_optimizer(rule, False)[0].parameters())),
            state_sizes_within_shards=all(size <= max(local_sizes) for size in state_sizes))
    results["tiger_nan_in_one_shard"] = _tiger_with_a_nan_in_rank_0s_shard(rank)
    results["quantized"] = {f"{rule.name} {options}": _quantized_shards(rule, dtype, options)
                            for rule in FSDP2_RULES for dtype, options in _quantized_runs(rule)}
    model, _ = _model_and_optimizer(RULES["Tiger"], sharded=True)
    reference = optim.Tiger(model.parameters(), impl="reference")
    model(torch.zeros((1, 1), dtype=torch.long)).backward()
    try:
        reference.step()
        results["reference_refused"] = ""
    except RuntimeError as error:
        results["reference_refused"] = str(error)
    return results


def _tiger_with_a_nan_in_rank_0s_shard(rank):
    """Tiger on FSDP2 shards, a NaN put in the linear weight's gradient on rank 0 only (its shard's first
    element) at the second step, and whole in this process with the NaN at that element: every rank
    must count the NaN (the counts summed over the shards), skip and shrink the whole tensor, and end
    as the whole run does."""
    runs = []
    for sharded in (True, False):
        model, optimizer = _model_and_optimizer(RULES["Tiger"], sharded)
        for step in range(SHARDED_STEPS):
            tokens = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(step))
            model(tokens).backward()
            if step == 1 and (rank == 0 or not sharded):
                local(model.linear.weight.grad)[0, 0] = math.nan
            optimizer.step()
            optimizer.zero_grad()
        runs.append(dict(params=[(p.full_tensor() if sharded else p.detach()).flatten().tolist()
                                 for p in model.parameters()],
                         nan_skips=[float(optimizer.state[p]["nan_skips"]) for p in model.parameters()]))
    return dict(sharded=runs[0], whole=runs[1])


def _quantized_runs(rule):
    """(param dtype, options) of each quantized or split-master run of ``rule``: int8 state with 24-bit
    masters of bf16 params (one run covers both), and int4 state on fp32 params where the rule keeps a
    state under its test hyperparameters (without one, int4 would run the plain fp32 step again)."""
    runs = [(torch.bfloat16, dict(state_dtype="int8", master_weight_bits=24))]
    if rule.state_names(hyper(rule)):
        runs.append((torch.float32, dict(state_dtype="int4")))
    return runs


QUANTIZED_STEPS = 2  # the first makes every state, the second reads its codes back (from a checkpoint)


def _quantized_shards(rule, dtype, options):
    """One rule stepped on FSDP2 shards with quantized state or split masters, against the same
    optimizer on whole tensors fed the same gradients (each gathered whole). ShardedModel's rows (8, 7
    and 1 elements) are no whole number of quantization blocks, so each of its params is stepped whole
    on every rank (optim.whole): the states are whole plain tensors, the same on every rank, and bit
    for bit the whole run's, params included (Tiger's RMS(θ) and SGDHD's ⟨g, g_prev⟩ taken on whole
    tensors too). Between the steps the sharded optimizer is replaced by a fresh one that loads this
    rank's state_dict: the two agreeing after the second step says the checkpoint resumes bit for bit
    (and costs no launch of its own; under the interpreter launches are the test's time)."""
    model, optimizer = _model_and_optimizer(rule, True, dtype, **options)
    whole_model, whole = _model_and_optimizer(rule, False, dtype, **options)
    params, whole_params = list(model.parameters()), list(whole_model.parameters())
    initial = [p.full_tensor().clone() for p in params]
    for step in range(QUANTIZED_STEPS):
        if step:
            saved = copy.deepcopy(optimizer.state_dict())
            optimizer = getattr(optim, rule.name)(_param_groups(rule, model), **hyper(rule), impl="triton", **options)
            optimizer.load_state_dict(saved)
        tokens = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(step))
        model(tokens).float().backward()
        for p, whole_param in zip(params, whole_params):
            whole_param.grad = p.grad.full_tensor()
        optimizer.step()
        optimizer.zero_grad()
        whole.step()

    fmt = FORMATS[options["state_dtype"]]
    # Each state of a param of N elements, stepped whole: int8 codes shaped as the param, int4 ones ⌈N/2⌉
    # bytes, ⌈N/block⌉ scales, θ's residual shaped as θ; plain tensors (the same on every rank).
    layouts = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            for name in rule.state_names(group):
                codes_shape = tuple(p.shape) if fmt.bits == 8 else (-(-p.numel() // 2),)
                layouts.append(tuple(state[name].shape) == codes_shape and not isinstance(state[name], DTensor)
                               and tuple(state[scale_name(name)].shape) == (-(-p.numel() // fmt.block),))
            if options.get("master_weight_bits"):
                layouts.append(tuple(state["master_residual"].shape) == tuple(p.shape))
    (names, values), (whole_names, whole_values) = _states(optimizer, params), _states(whole, whole_params)
    return dict(moved=not _same_tensors([p.full_tensor() for p in params], initial),
                params_equal=_same_tensors([p.full_tensor() for p in params], whole_params),
                states_equal=names == whole_names and _same_tensors(values, whole_values),
                counts_equal=_counts(optimizer) == _counts(whole),
                layouts=bool(layouts) and all(layouts))


def _param_groups(rule, model):
    return rule.param_groups(model) if rule.param_groups is not None else list(model.parameters())


def _twin_groups(groups, twin_of):
    """The same param groups over the twin tensors."""
    return [{**group, "params": [twin_of[p] for p in group["params"]]} if isinstance(group, dict) else twin_of[group]
            for group in groups]


def _states(optimizer, params):
    """Each param's state names (sorted), and their tensors in that order."""
    names = [sorted(optimizer.state[p]) for p in params]
    return names, [optimizer.state[p][name] for p, param_names in zip(params, names) for name in param_names]


def _counts(optimizer):
    """Each group's quantization count (the draws' key), where it has one."""
    return [int(group[COUNT_KEY]) for group in optimizer.param_groups if COUNT_KEY in group]


def _same_tensors(first, second):
    """Bit for bit: the same dtypes, shapes and values (NaN nowhere expected)."""
    return len(first) == len(second) and all(a.dtype == b.dtype and torch.equal(local(a), local(b))
                                             for a, b in zip(first, second))


@pytest.fixture(scope="module")
def sharded_ranks(tmp_path_factory):
    """Each rank's results of ``_sharded_worker``: one spawn (starting processes is the slow part) for
    the tests of FSDP2 below."""
    return spawn(_sharded_worker, 2, tmp_path_factory.mktemp("fsdp2"))


def test_every_rule_steps_fsdp2_shards_as_the_whole_tensors(sharded_ranks):
    ranks = [{name: result for name, result in rank.items() if name not in ("quantized", "tiger_nan_in_one_shard")}
             for rank in sharded_ranks]
    assert "impl='triton'" in ranks[0].pop("reference_refused"), "Tiger's reference on shards must refuse"
    ranks[1].pop("reference_refused")
    for name, result in ranks[0].items():
        assert result["moved"], f"{name}: the run did not move the params"
        # Whole-tensor norms summed over shards round differently from one norm: fp32 rounding, no more.
        assert result["max_difference"] <= 1e-5 * max(1.0, result["max_scale"]), f"{name}: {result}"
        assert result["state_sizes_within_shards"], f"{name}: a state tensor larger than a shard"
    assert ranks[0] == ranks[1], "both ranks gather the same full params"


def test_fsdp2_tiger_skips_a_nan_in_one_ranks_shard_on_every_rank(sharded_ranks):
    """A NaN in one rank's shard of a gradient: both ranks count it, shrink that tensor alike, and end
    equal to the run of the whole tensors (to fp32 rounding: RMS(θ) is summed over the shards)."""
    runs = [rank["tiger_nan_in_one_shard"] for rank in sharded_ranks]
    assert runs[0]["sharded"]["nan_skips"] == runs[1]["sharded"]["nan_skips"], "the ranks disagree on the skip"
    assert runs[0]["sharded"]["nan_skips"] == runs[0]["whole"]["nan_skips"] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert runs[0]["sharded"]["params"] == runs[1]["sharded"]["params"], "the ranks gather different params"
    for sharded, whole in zip(runs[0]["sharded"]["params"], runs[0]["whole"]["params"]):
        assert max(abs(a - b) for a, b in zip(sharded, whole)) <= 1e-5 * max(1.0, *map(abs, whole))


def test_quantized_states_of_unaligned_fsdp2_params_step_whole_as_the_whole_tensors(sharded_ranks):
    """int8 state with 24-bit masters, and int4 state, for every rule, on params whose rows are no
    whole number of blocks: on each rank the params, every code, scale, residual and step equal to the
    same optimizer on whole tensors after two steps (every state made, then read back, the second from
    a per-rank checkpoint), each state whole."""
    for rank, runs in enumerate(rank["quantized"] for rank in sharded_ranks):
        expected = {f"{rule.name} {options}" for rule in FSDP2_RULES for _, options in _quantized_runs(rule)}
        assert set(runs) == expected, f"rank {rank}: runs missing: {expected - set(runs)}"
        for run, result in runs.items():
            assert result["moved"], f"rank {rank}, {run}: the run did not move the params"
            assert result["layouts"], f"rank {rank}, {run}: a state not laid out as the whole tensor"
            assert result["params_equal"], f"rank {rank}, {run}: the params differ from the whole tensors' step"
            assert result["states_equal"], f"rank {rank}, {run}: a state differs from the whole tensors' step"
            assert result["counts_equal"], f"rank {rank}, {run}: the quantization count differs"


DCP_RUNS = ((torch.float32, {}), (torch.bfloat16, dict(state_dtype=torch.float32, master_weight_bits=24)))
DCP_RULES = FSDP2_RULES


def _dcp_worker(rank, world_size, directory):
    """Every rule on FSDP2 shards, in fp32 and in bf16 with fp32 states and 24-bit masters: two steps,
    a checkpoint by torch.distributed.checkpoint (as FSDP2 users save: get_state_dict, dcp.save), a
    third step; then a fresh model and optimizer load it (dcp.load, set_state_dict: the rank's shards
    of every DTensor) and take the third step. The resumed run must be the uninterrupted one."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    results = {}
    for rule in DCP_RULES:
        for dtype, options in DCP_RUNS:
            run = f"{rule.name} {dtype} {options}"
            checkpoint = f"{directory}/{rule.name}-{dtype}"
            runs = []
            for resumed in (False, True):
                # A learned lr (SGDHD's α) is a tensor from its first step on; given as one, a fresh
                # optimizer's state dict, which dcp.load fills, holds a tensor where the checkpoint has one.
                learned = dict(lr=torch.tensor(hyper(rule)["lr"])) if rule.learns_lr else {}
                model, optimizer = _model_and_optimizer(rule, True, dtype, **options, **learned)
                if resumed:
                    model_state, optimizer_state = get_state_dict(model, optimizer)
                    state = {"model": model_state, "optimizer": optimizer_state}
                    dcp.load(state, checkpoint_id=checkpoint)
                    set_state_dict(model, optimizer, model_state_dict=state["model"],
                                   optim_state_dict=state["optimizer"])
                for step in range(2 if resumed else 0, 3):
                    if step == 2 and not resumed:
                        model_state, optimizer_state = get_state_dict(model, optimizer)
                        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
                    tokens = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(step))
                    model(tokens).float().backward()
                    optimizer.step()
                    optimizer.zero_grad()
                params = list(model.parameters())
                runs.append(([local(p) for p in params], *_states(optimizer, params)))
            (params, names, values), (resumed_params, resumed_names, resumed_values) = runs
            placed = [isinstance(value, DTensor) for value in values
                      if value.dim() > 0 or isinstance(value, DTensor)]
            results[run] = dict(params_equal=_same_tensors(params, resumed_params),
                                states_equal=names == resumed_names and _same_tensors(values, resumed_values),
                                placed=all(placed))
    return results


def test_fsdp2_optimizer_state_saved_by_torch_distributed_checkpoint_resumes_bit_for_bit(tmp_path):
    """torch.distributed.checkpoint saves each rank's shard of every float state and master residual
    (DTensors placed as their params) and loads them back on the same shards, uneven ones (4/3 rows)
    and an empty one included: the third step after resuming equals the uninterrupted third step, bit
    for bit, in the params and every state, on both ranks. Kept as plain tensors, the states would be
    taken for replicated ones: rank 0's saved for both, and rank 1's load refused (4 rows are not 3)."""
    for rank, results in enumerate(spawn(_dcp_worker, 2, tmp_path, str(tmp_path))):
        expected = {f"{rule.name} {dtype} {options}" for rule in DCP_RULES for dtype, options in DCP_RUNS}
        assert set(results) == expected, f"rank {rank}: runs missing: {expected - set(results)}"
        for run, result in results.items():
            assert result["placed"], f"rank {rank}, {run}: an element-wise state is not a DTensor"
            assert result["params_equal"], f"rank {rank}, {run}: the resumed params differ from the uninterrupted"
            assert result["states_equal"], f"rank {rank}, {run}: a resumed state differs from the uninterrupted"


def _old_and_misplaced_states_worker(rank, world_size):
    """On one rank (its FSDP2 params are DTensors of one shard): a checkpoint whose states are plain
    tensors of the shard, as states were kept before they were DTensors, loads and steps as the
    DTensor one; a DTensor state placed otherwise than its param is refused, before any change."""
    from torch.distributed.tensor import Replicate

    rule = next(rule for rule in FSDP2_RULES if rule.states and not rule.learns_lr)
    batches = [torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(step)) for step in range(2)]

    def step(model, optimizer, tokens):
        model(tokens).backward()
        optimizer.step()
        optimizer.zero_grad()

    model, optimizer = _model_and_optimizer(rule, True)
    step(model, optimizer, batches[0])
    saved = copy.deepcopy(optimizer.state_dict())
    saved_params = [local(p).clone() for p in model.parameters()]
    step(model, optimizer, batches[1])
    params = list(model.parameters())
    expected = ([local(p).clone() for p in params], *_states(optimizer, params))

    old = copy.deepcopy(saved)
    old["state"] = {i: {name: local(value) for name, value in state.items()} for i, state in old["state"].items()}
    resumed_model, resumed = _model_and_optimizer(rule, True)
    with torch.no_grad():  # the params as they were when the checkpoint was saved
        for p, saved_param in zip(resumed_model.parameters(), saved_params):
            local(p).copy_(saved_param)
    resumed.load_state_dict(old)
    step(resumed_model, resumed, batches[1])
    resumed_params = list(resumed_model.parameters())
    got = ([local(p) for p in resumed_params], *_states(resumed, resumed_params))

    misplaced = copy.deepcopy(saved)
    state = next(state for state in misplaced["state"].values() if any(isinstance(v, DTensor) for v in state.values()))
    name = next(name for name, value in state.items() if isinstance(value, DTensor))
    state[name] = DTensor.from_local(local(state[name]), state[name].device_mesh, [Replicate()], run_check=False)
    before = _states(resumed, resumed_params)[1]
    before = [local(value).clone() for value in before]
    try:
        resumed.load_state_dict(misplaced)
        message = None
    except ValueError as error:
        message = str(error)
    after = [local(value) for value in _states(resumed, resumed_params)[1]]
    return dict(rule=rule.name, state=name, old_resumes=expected[1] == got[1] and _same_tensors(expected[0], got[0])
                and _same_tensors([local(v) for v in expected[2]], [local(v) for v in got[2]]),
                message=message, unchanged=_same_tensors(before, after))


def test_old_plain_shard_states_load_and_misplaced_dtensor_states_are_refused(tmp_path):
    (result,) = spawn(_old_and_misplaced_states_worker, 1, tmp_path)
    assert result["old_resumes"], f"{result['rule']}: plain per-shard states did not resume as the DTensor ones"
    assert result["message"] is not None, f"{result['rule']}: a DTensor state placed as Replicate() was loaded"
    assert f"state {result['state']!r}" in result["message"] and "placed" in result["message"], result["message"]
    assert result["unchanged"], "the refused checkpoint changed a state"
