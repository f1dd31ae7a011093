"""fo.Muon's int8 and int4 momentum on FSDP2 shards (2 gloo CPU ranks): coded per shard, in blocks from
each shard's first element, as the registry's states of FSDP2 params. The momentum is element-wise and
reads no θ, so each shard's codes are those of the same optimizer stepping that shard's rows as a
matrix of its own in one process; and where every shard is whole blocks, the sharded run is the
one-process run on the whole matrices, θ and codes bit for bit. Tolerances: none.
"""
import torch

import fusedoptim as fo
from fusedoptim.optim.quantization import FORMATS, code_values
from tests.test_distributed import spawn

# (4, 128): 256 elements a rank, whole blocks of int8 (256) and int4 (128); (3, 40): shards of 80 and 40
# elements, one partial block each; (1, 8): rank 1's shard empty.
SHAPES = [(4, 128), (3, 40), (1, 8)]
STEPS = 2  # the first codes (1 − μ)g from zero codes, the second reads them back
IMPLS = ("reference", "triton")


def _rank_part(codes, scales, state_dtype, first, length, cols):
    """The whole matrix's codes and scales of rows [first, first + length), blocks of whole shards."""
    fmt, start, end = FORMATS[state_dtype], first * cols, (first + length) * cols
    part = codes.narrow(0, first, length) if fmt.bits == 8 else codes[start // 2:end // 2]
    return part, scales[start // fmt.block:end // fmt.block]


def _quantized_shards_worker(rank, world_size):
    from torch.distributed.fsdp import fully_shard

    from fusedoptim.optim.shards import local, placed_as, shard_range

    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(shape, generator=generator) for shape in SHAPES]
    grads = [[torch.randn(shape, generator=generator) for shape in SHAPES] for _ in range(STEPS)]
    results = {}
    for state_dtype in ("int8", "int4"):
        codes_of = {}
        for impl in IMPLS:
            def muon(params):
                return fo.Muon(params, impl=impl, lr=0.02, state_dtype=state_dtype)

            model = torch.nn.ParameterList([torch.nn.Parameter(value.clone()) for value in initial])
            fully_shard(model)
            sharded, ranges = list(model.parameters()), [shard_range(p)[1:] for p in model.parameters()]
            whole = [torch.nn.Parameter(value.clone()) for value in initial]
            rows = [torch.nn.Parameter(value.narrow(0, first, length).clone())
                    for value, (first, length) in zip(initial, ranges)]
            optimizers = (muon(sharded), muon(whole), muon([r for r in rows if r.numel()]))
            for step_grads in grads:
                for p, q, r, grad, (first, length) in zip(sharded, whole, rows, step_grads, ranges):
                    p.grad = placed_as(p, grad.narrow(0, first, length).clone())
                    q.grad, r.grad = grad.clone(), grad.narrow(0, first, length).clone()
                for optimizer in optimizers:
                    optimizer.step()
            states = [optimizers[0].state[p] for p in sharded]
            codes_of[impl] = [code_values(state["momentum_buffer"], "signed", local(p).numel())
                              for state, p in zip(states, sharded)]
            per_shard = [torch.equal(state["momentum_buffer"], optimizers[2].state[r]["momentum_buffer"])
                         and torch.equal(state["momentum_buffer_scale"], optimizers[2].state[r]["momentum_buffer_scale"])
                         for state, r in zip(states, rows) if r.numel()]
            (first, length), cols = ranges[0], SHAPES[0][1]
            whole_state = optimizers[1].state[whole[0]]
            codes, scales = _rank_part(whole_state["momentum_buffer"], whole_state["momentum_buffer_scale"],
                                       state_dtype, first, length, cols)
            results[f"{state_dtype}-{impl}"] = dict(
                per_shard=per_shard,
                whole_blocks=[torch.equal(local(sharded[0]), whole[0].detach().narrow(0, first, length)),
                              torch.equal(states[0]["momentum_buffer"], codes),
                              torch.equal(states[0]["momentum_buffer_scale"], scales)],
                plain=all(type(state["momentum_buffer"]) is torch.Tensor for state in states),
                moved=not torch.equal(local(sharded[0]), initial[0].narrow(0, first, length)))
        results[f"{state_dtype}-impls-agree"] = all(torch.equal(a, b) for a, b in zip(*codes_of.values()))
    return results


def test_a_quantized_momentum_is_coded_per_shard(tmp_path):
    """Two steps over 2 ranks, int8 and int4, both impls: each shard's codes and scales equal one process's
    on that shard's rows alone (uneven shards, partial blocks); the shape whose shards are whole blocks
    equals the one-process run on the whole matrix (θ, codes, scales); the impls code alike (the codes'
    values: int4's scales may differ by an fp32 unit, tests/test_muon_quantized.py); the codes are plain
    tensors of the local shard."""
    ranks = spawn(_quantized_shards_worker, 2, tmp_path)
    for rank, results in enumerate(ranks):
        for name, result in results.items():
            if name.endswith("impls-agree"):
                assert result, f"rank {rank}: the impls' codes differ ({name})"
                continue
            assert result["moved"] and result["plain"], f"rank {rank}, {name}: {result}"
            assert all(result["per_shard"]) and len(result["per_shard"]) == 3 - rank, f"rank {rank}, {name}: {result}"
            assert all(result["whole_blocks"]), f"rank {rank}, {name}: θ, codes, scales against one process: {result}"
