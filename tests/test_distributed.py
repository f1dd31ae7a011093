"""Several processes on the CPU (gloo over loopback): the majority-vote DDP hook.

Each test spawns its workers with torch.multiprocessing; they inherit TRITON_INTERPRET=1 from
tests/conftest.py, so the packing and voting kernels run under the interpreter. Every worker writes
what it saw to a JSON file that the test reads back.
"""
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import optim
from optim.distributed import MajorityVoteState, majority_vote_hook

FEATURES, OUTPUTS, BATCH = 64, 31, 16  # 2015 params: 63 words
STEPS = 20


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
