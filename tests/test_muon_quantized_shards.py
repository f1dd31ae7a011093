"""fo.Muon's int8 and int4 momentum on FSDP2 shards (2 gloo CPU ranks), kept as the registry keeps
quantized states of FSDP2 params (``optim.saved_states``): a matrix whose rows are whole blocks has its
shards coded by their ranks, in the whole tensor's blocks; any other is kept whole on every rank. So
the sharded run is the one-process run on the whole matrices, θ, codes and scales bit for bit, and
torch.distributed.checkpoint saves and loads the codes as they are. Split master weights too (the
residual a DTensor placed as θ). Tolerances: none.
"""
import torch

import fusedoptim as fo
from fusedoptim.optim.quantization import FORMATS
from tests.test_distributed import spawn

# (2, 256): rows of whole blocks at int8 (256) and int4 (128), coded per shard; (3, 40): rows of no whole
# block, kept whole; (1, 8): kept whole, rank 1's shard of θ empty.
SHAPES = [(2, 256), (3, 40), (1, 8)]
STEPS = 2  # the first codes (1 − μ)g from zero codes, the second reads them back
# (state_dtype, impl, param dtype, master_weight_bits): int4's reference differs from int8's in the format
# alone (optim.quantization, tested on whole tensors); bf16 params with 24-bit masters, whose residual is
# a DTensor placed as θ, in both impls.
RUNS = [("int8", "reference", torch.float32, None), ("int8", "triton", torch.float32, None),
        ("int4", "triton", torch.float32, None), ("int8", "reference", torch.bfloat16, 24),
        ("int8", "triton", torch.bfloat16, 24)]


def _rank_part(codes, scales, state_dtype, first, length, cols):
    """The whole matrix's codes and scales of rows [first, first + length) (rows of whole blocks)."""
    fmt, start, end = FORMATS[state_dtype], first * cols, (first + length) * cols
    part = codes.narrow(0, first, length) if fmt.bits == 8 else codes[start // 2:end // 2]
    return part, scales[start // fmt.block:end // fmt.block]


def _quantized_shards_worker(rank, world_size, directory):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    from fusedoptim.optim.shards import local, placed_as, shard_range

    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(shape, generator=generator) for shape in SHAPES]
    grads = [[torch.randn(shape, generator=generator) for shape in SHAPES] for _ in range(STEPS)]
    results = {}
    for state_dtype, impl, dtype, bits in RUNS:
        def muon(params):
            return fo.Muon(params, impl=impl, lr=0.02, state_dtype=state_dtype, master_weight_bits=bits)

        model = torch.nn.ParameterList([torch.nn.Parameter(value.to(dtype, copy=True)) for value in initial])
        fully_shard(model)
        sharded, ranges = list(model.parameters()), [shard_range(p)[1:] for p in model.parameters()]
        whole = [torch.nn.Parameter(value.to(dtype, copy=True)) for value in initial]
        optimizer, whole_optimizer = muon(sharded), muon(whole)
        for step_grads in grads:
            for p, q, grad, (first, length) in zip(sharded, whole, step_grads, ranges):
                p.grad = placed_as(p, grad.narrow(0, first, length).to(dtype))
                q.grad = grad.to(dtype)
            optimizer.step()
            whole_optimizer.step()
        same = []
        for i, (p, q, (first, length)) in enumerate(zip(sharded, whole, ranges)):
            state, whole_state = optimizer.state[p], whole_optimizer.state[q]
            codes, scales = whole_state["momentum_buffer"], whole_state["momentum_buffer_scale"]
            if i == 0:
                codes, scales = _rank_part(codes, scales, state_dtype, first, length, SHAPES[0][1])
            same.append([torch.equal(local(p), q.detach().narrow(0, first, length)),
                         torch.equal(state["momentum_buffer"], codes),
                         torch.equal(state["momentum_buffer_scale"], scales),
                         bits is None or torch.equal(local(state["master_residual"]),
                                                     whole_state["master_residual"].narrow(0, first, length))])
        saved = [{name: local(value).clone() for name, value in optimizer.state[p].items()} for p in sharded]
        checkpoint = f"{directory}/{state_dtype}-{impl}-{bits}"
        dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=checkpoint)
        optimizer.zero_grad()  # DCP makes a fresh optimizer's state only where no param has a gradient
        fresh = muon(model.parameters())
        loaded = get_optimizer_state_dict(model, fresh)
        dcp.load(loaded, checkpoint_id=checkpoint)
        set_optimizer_state_dict(model, fresh, loaded)
        # The codes and scales plain tensors as kept; a residual a DTensor placed as θ, as made.
        resumed = [all(torch.equal(local(fresh.state[p][name]), value) and
                       (type(fresh.state[p][name]) is torch.Tensor) == (name != "master_residual")
                       for name, value in state.items()) for p, state in zip(sharded, saved)]
        results[f"{state_dtype}-{impl}-{bits}"] = dict(same=same, resumed=resumed,
                                                       moved=not torch.equal(whole[0].detach(), initial[0].to(dtype)))
    return results


def test_a_quantized_momentum_on_shards_steps_as_one_process(tmp_path):
    """Two steps over 2 ranks, int8 and int4, both impls, and bf16 params with 24-bit masters: each rank's
    rows of θ (and of its residual) and its codes and scales (its shard's, or the whole momentum's) equal
    one process's on the whole matrices; a DCP save and load into a fresh optimizer gives every rank its
    codes, scales and residual back, each as kept."""
    ranks = spawn(_quantized_shards_worker, 2, tmp_path, str(tmp_path))
    for rank, results in enumerate(ranks):
        for name, result in results.items():
            assert result["moved"], f"rank {rank}, {name}: the params did not move"
            assert result["same"] == [[True] * 4] * len(SHAPES), f"rank {rank}, {name}: [θ, codes, scales, residual] {result}"
            assert all(result["resumed"]), f"rank {rank}, {name}: DCP did not give the codes back: {result}"
