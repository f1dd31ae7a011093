"""Compile every rule's fused kernel for a GPU target on a machine without a GPU, and report the width
of its global loads and stores from the PTX.

Kernel engineers: this is how to see, without a GPU, that a full block of a 16-byte aligned launch
reads and writes with 128-bit accesses (ld.global.v4 / st.global.v4) and only the masked tail and
unaligned launches fall back to scalar ones. It drives a real optimizer step for each registry row on
CPU tensors through the real host path (state, pointer table, arguments), but each `kernel[grid](...)`
only compiles (triton's `warmup`, with triton's bundled ptxas) against a stand-in driver that names
the target; nothing runs. Must be run without TRITON_INTERPRET.
"""
import argparse
import json
import os
import re
from collections import Counter

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver


class CompileOnlyDriver:
    """Enough of a triton driver to compile for `target`: no device is touched."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")


class CompileOnly:
    """Stands in for the kernel object: `kernel[grid](...)` compiles and records, never launches."""

    def __init__(self, kernel):
        self.kernel, self.compiled = kernel, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.compiled.append(self.kernel.warmup(*args, grid=grid, **kwargs))


def access_widths(ptx: str) -> dict:
    return dict(Counter(re.findall(r"(?:ld|st)\.global(?:\.v\d)?\.b\d+", ptx)))


def cases():
    """(rule, dtype, label, group options, optimizer options): every rule in every dtype, Tiger's
    variants that change the kernel (an embedding table's per-row lr, stochastic rounding), steps
    under GradScaler ("amp": the in-kernel unscale and skip, also in SGDHD's reduction), and int8 and int4
    states."""
    import optim

    for name, rule in optim.RULES.items():
        for dtype in rule.dtypes:
            yield name, dtype, "", {}, {}
    yield "Tiger", torch.float32, " embedding", {"param_kind": "embedding"}, {}
    for dtype in (torch.bfloat16, torch.float16):
        yield "Tiger", dtype, " stochastic", {}, {"stochastic_rounding": True}
    for name, dtype in (("AdamW", torch.float32), ("AdamW", torch.bfloat16), ("SGDHD", torch.float32)):
        yield name, dtype, " amp", {}, {"amp": True}
    for name in ("Adam", "Adagrad", "SGDHD"):  # quantized states: signed, companded, stochastic codes; a reduction
        for state_dtype in ("int8", "int4"):
            yield name, torch.float32, f" {state_dtype}", {}, {"state_dtype": state_dtype}


def compile_step(optim, launcher, name, dtype, group_options=None, options=None):
    """One optimizer step of rule ``name`` whose launches compile (and are recorded) instead of running."""
    options = dict(options or {})
    update = CompileOnly(launcher.multi_tensor_update_kernel)
    reduce = CompileOnly(launcher.multi_tensor_reduce_kernel)  # SGDHD's hypergradient
    launcher.multi_tensor_update_kernel, launcher.multi_tensor_reduce_kernel = update, reduce
    try:
        params = [torch.zeros(64, 64, dtype=dtype), torch.zeros(64, dtype=dtype)]
        for p in params:
            p.grad = torch.zeros_like(p)
        amp = options.pop("amp", False)
        optimizer = getattr(optim, name)([dict(params=params, **(group_options or {}))], impl="triton", **options)
        if amp:  # what GradScaler.step sets before it calls step()
            optimizer.grad_scale, optimizer.found_inf = torch.ones(()), torch.zeros(())
        optimizer.step()
    finally:
        launcher.multi_tensor_update_kernel, launcher.multi_tensor_reduce_kernel = update.kernel, reduce.kernel
    return update.compiled, reduce.compiled


def search_space_extremes(optim, launcher):
    """The tuner's smallest and largest candidates (autotune/space.py) compile too, for AdamW in fp32
    and bf16: a table tuned on a GPU may pick any of them."""
    from autotune.space import search_space

    results, default = {}, launcher.launch_config
    for dtype in (torch.float32, torch.bfloat16):
        space = sorted(search_space(dtype), key=lambda c: (c.block_size, c.blocks_per_program, c.num_warps))
        for label, config in (("smallest", space[0]), ("largest", space[-1])):
            launcher.launch_config = lambda rule, dtype, numel, device: config
            try:
                (kernel,), _ = compile_step(optim, launcher, "AdamW", dtype)
            finally:
                launcher.launch_config = default
            results[f"AdamW {str(dtype)[6:]} {label} candidate"] = access_widths(kernel.asm["ptx"])
    return results


def majority_vote_kernels():
    """The majority vote's packing and voting kernels (kernels/majority_vote.py) on 1000 fp32 gradients."""
    from kernels import majority_vote

    pack, vote = CompileOnly(majority_vote.pack_signs_kernel), CompileOnly(majority_vote.majority_vote_kernel)
    majority_vote.pack_signs_kernel, majority_vote.majority_vote_kernel = pack, vote
    try:
        majority_vote.pack_signs(torch.zeros(1000))
        majority_vote.majority_vote(torch.zeros((3, 32), dtype=torch.int32), torch.zeros(1000))
    finally:
        majority_vote.pack_signs_kernel, majority_vote.majority_vote_kernel = pack.kernel, vote.kernel
    return {"majority vote pack": access_widths(pack.compiled[0].asm["ptx"]),
            "majority vote vote": access_widths(vote.compiled[0].asm["ptx"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for Hopper (default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    driver.set_active(CompileOnlyDriver(GPUTarget("cuda", args.arch, 32)))

    import autotune
    import optim
    import optim.plan
    from kernels import launcher

    optim.plan.INTERPRETED = True  # let impl="triton" take CPU tensors: they are only described, never read
    launcher.launch_config = lambda rule, dtype, numel, device: autotune.DEFAULT_CONFIGS[
        torch.empty((), dtype=dtype).element_size()]
    results = {}
    for name, dtype, label, group_options, options in cases():
        update, reduce = compile_step(optim, launcher, name, dtype, group_options, options)
        key = f"{name} {str(dtype)[6:]}{label}"
        (results[key],) = [access_widths(kernel.asm["ptx"]) for kernel in update]
        for kernel in reduce:
            results[f"{key} reduce"] = access_widths(kernel.asm["ptx"])
    results.update(search_space_extremes(optim, launcher))
    results.update(majority_vote_kernels())
    if args.json:
        print(json.dumps(results))
        return
    print(f"global accesses in the PTX for sm_{args.arch} (per thread; full blocks first, then the masked tail)")
    for key, widths in results.items():
        print(f"{key:>18}: " + ", ".join(f"{k} ×{v}" for k, v in sorted(widths.items())))


if __name__ == "__main__":
    main()
