"""What a DDP step sends: fp32 all-reduce against signSGD's majority vote, measured on N workers.

    python -m scripts.communication [--workers 2 4] [--steps 5] [--out DIR]

Each worker trains the GPT of scripts/memory.py (the CPU miniature; GPT-2 small on a GPU) for a few
steps with DDP, once with torch's default all-reduce and once with ``optim.distributed.majority_vote_hook``,
and counts the bytes it put into each collective (the hooks' own counters) and the step time. The
backend is NCCL on a GPU and gloo over loopback on a CPU, where the vote's kernels run under the
interpreter: CPU step times measure Python, not the wire. Writes communication.csv and .md to
runs/<machine>/, which git ignores; `--out reports/<machine>` writes them into the committed reports/
instead, to keep them.
"""
import argparse
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from scripts.gpt import GPT
from scripts.memory import MODELS
from scripts.report import OUT_HELP, describe, machine, markdown_table, report_directory, write_csv, written


def _counting_allreduce(state, bucket):
    """torch's default fp32 all-reduce, counting the bytes it is given."""
    state["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
    return default_hooks.allreduce_hook(None, bucket)


def _worker(rank, world_size, directory, steps, queue):
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world_size)
    from fusedoptim import optim
    from fusedoptim.optim.distributed import MajorityVoteState, majority_vote_hook

    config, tokens = MODELS[device.type]
    try:
        for method in ("fp32 all-reduce", "majority vote"):
            torch.manual_seed(0)
            model = DistributedDataParallel(GPT(config).to(device), device_ids=[rank] if device.type == "cuda" else None)
            if method == "majority vote":
                state = MajorityVoteState()
                model.register_comm_hook(state, majority_vote_hook)
                optimizer = optim.SignSGD(model.parameters(), lr=1e-4)
            else:
                state = {"bytes": 0}
                model.register_comm_hook(state, _counting_allreduce)
                optimizer = optim.AdamW(model.parameters(), lr=1e-4)
            batch = torch.randint(0, config.vocab, (1, tokens + 1), device=device,
                                  generator=torch.Generator(device=device).manual_seed(rank))
            times = []
            for _ in range(steps + 1):  # the first step warms up (compiles kernels), not timed
                start = time.perf_counter()
                model(batch).backward()
                optimizer.step()
                optimizer.zero_grad()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            sent = state.bytes_sent if method == "majority vote" else state["bytes"]
            if rank == 0:
                params = sum(p.numel() for p in model.parameters())
                queue.put(dict(method=method, workers=world_size, params=params, bytes_per_step=sent // (steps + 1),
                               step_ms=1e3 * sorted(times[1:])[len(times[1:]) // 2]))
    finally:
        dist.destroy_process_group()


def measure(world_size: int, steps: int) -> list:
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as directory:
        mp.start_processes(_worker, args=(world_size, directory, steps, queue), nprocs=world_size, join=True,
                           start_method="spawn")
    return [queue.get() for _ in range(2)]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.communication", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", nargs="+", type=int, default=[2, 4], help="world sizes (default 2 4)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (default 5)")
    parser.add_argument("--out", help=OUT_HELP)
    arguments = parser.parse_args(argv)
    if torch.cuda.is_available() and max(arguments.workers) > torch.cuda.device_count():
        parser.error(f"--workers: this machine has {torch.cuda.device_count()} GPU(s), one per worker")
    facts = machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rows = [row for world_size in arguments.workers for row in measure(world_size, arguments.steps)]
    allreduce = {row["workers"]: row["bytes_per_step"] for row in rows if row["method"] == "fp32 all-reduce"}
    for row in rows:
        row["fraction_of_fp32"] = row["bytes_per_step"] / allreduce[row["workers"]]
    directory = report_directory(facts, arguments.out)
    write_csv(directory / "communication.csv", facts, rows)
    table = markdown_table(rows, {
        "workers": lambda r: r["workers"], "method": lambda r: r["method"], "params": lambda r: f"{r['params']:,}",
        "bytes sent per worker per step": lambda r: f"{r['bytes_per_step']:,}",
        "of fp32": lambda r: f"{r['fraction_of_fp32']:.4f}", "step (median)": lambda r: f"{r['step_ms']:.1f} ms"})
    note = ("" if torch.cuda.is_available() else
            "\nOn a CPU the step times are not the wire's: gloo over loopback, and the vote's packing "
            "kernels and every optimizer step run under the Triton interpreter (AdamW beside the all-reduce, "
            "SignSGD beside the vote). The bytes are what each worker put into its collectives.\n")
    text = f"# What a DDP step sends\n\nMeasured on {describe(facts)}.\n\n{table}\n{note}"
    (directory / "communication.md").write_text(text)
    print(text)
    print(written(directory, ["communication.csv", "communication.md"]))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
