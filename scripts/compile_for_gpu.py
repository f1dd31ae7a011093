"""Compile every rule's fused kernel for a GPU target on a machine without a GPU, and report the width
of its global loads and stores from the PTX and the SASS instructions per element of its full blocks.

Kernel engineers: this is how to see, without a GPU, that a full block of a 16-byte aligned launch
reads and writes with 128-bit accesses (ld.global.v4 / st.global.v4) and only the masked tail and
unaligned launches fall back to scalar ones. It drives a real optimizer step for each registry row on
CPU tensors through the real host path (state, pointer table, arguments), but each `kernel[grid](...)`
only compiles (triton's `warmup`, with triton's bundled ptxas) against a stand-in driver that names
the target; nothing runs. Must be run without TRITON_INTERPRET.

Muon's Newton–Schulz kernels (bf16 `tl.dot` products at their GPU tiles) are reported apart, by
scripts/tensor_cores.py: their tensor-core instructions (wgmma / mma.sync in the PTX, HGMMA / HMMA in
the SASS), registers per thread, spills and shared memory.

`--budget` compiles the storage formats whose ALU cost tests/test_alu_budget.py holds to the memory
system's pace (``budget_cases``) and reports ``sass per element`` for each (``sass_per_element``).
"""
import argparse
import json
import os
import re
from collections import Counter

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

from scripts.tensor_cores import newton_schulz_kernels


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


def _sass_lines(sass: str) -> list:
    """The SASS as ("label", name) and ("op", text) entries, in order (nvdisasm's listing as triton keeps it)."""
    lines = []
    for line in sass.splitlines():
        label = re.fullmatch(r"\s*(\.?L\w+):\s*", line)
        if label:
            lines.append(("label", label.group(1)))
        elif "\t" in line and re.search(r"\t\s*[@A-Z]", line):
            lines.append(("op", line.split("\t", 1)[1].strip()))
    return lines


def _branch_target(op: str):
    found = re.search(r"\bBRA\s+(?:`\()?(\.?L\w+)", op)
    return found.group(1) if found else None


def full_block_instructions(sass: str) -> int:
    """SASS instructions one iteration of the update kernel's block loop executes on a full block.

    Found by the branch structure, not by line numbers: the loop is the backward unconditional branch
    (the latch) to its head; the head's first conditional branch jumps forward to the full block (the
    unmasked path: no predicated global store), and the masked tail falls through; both paths join at
    the last label before the latch. Counted: the head up to that branch, the full block up to the
    join, and the latch (what the compiler hoisted out of the block into the loop is counted with it).
    Where the block has branches of its own (a runtime flag such as Tiger's moving θ) both sides are
    counted: an upper bound."""
    lines = _sass_lines(sass)
    where = {name: i for i, (kind, name) in enumerate(lines) if kind == "label"}
    latches = [i for i, (kind, op) in enumerate(lines) if kind == "op" and op.startswith("BRA ")
               and where.get(_branch_target(op), i) < i - 1]  # backward, and not a trap's branch to itself
    if len(latches) != 1:
        raise ValueError(f"expected one block loop, found {len(latches)} backward branches")
    latch = latches[0]
    head = where[_branch_target(lines[latch][1])]
    branch = next(i for i in range(head + 1, latch) if lines[i][0] == "op" and lines[i][1].startswith("@")
                  and _branch_target(lines[i][1]))
    full = where[_branch_target(lines[branch][1])]
    join = max(i for i in range(full + 1, latch) if lines[i][0] == "label")
    count = lambda first, last, pattern="": sum(kind == "op" and re.match(pattern, op) is not None
                                                for kind, op in lines[first:last])
    masked_stores = r"@!?P\d+\s+STG"  # stores under a predicate: the tail's mask (or one lane's scale)
    if not head < branch < full < join < latch or count(full, join, masked_stores) >= count(branch, full, masked_stores):
        raise ValueError("the loop head's first branch does not lead to the unmasked full block")
    return count(head, branch + 1) + count(full, join) + count(join, latch + 1)


def sass_per_element(kernel, config) -> float:
    """Full-block SASS instructions per element: each thread handles block_size / (32 · num_warps)
    elements of a block."""
    return full_block_instructions(kernel.asm["sass"]) / (config.block_size // (32 * config.num_warps))


def cases():
    """(rule, dtype, label, group options, optimizer options): every rule in every dtype, Tiger's
    variants that change the kernel (an embedding table's per-row lr, stochastic rounding), steps
    under GradScaler ("amp": the in-kernel unscale and skip, also in SGDHD's reduction), and int8 and int4
    states. A rule without a kernel (SparseAdam) has nothing to compile."""
    from fusedoptim import optim

    kernel_rules = {name: rule for name, rule in optim.RULES.items() if rule.has_kernel}
    for name, rule in kernel_rules.items():
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


def budget_cases():
    """(rule, dtype, label, group options, optimizer options): the storage formats whose ALU cost is held
    to the memory system's pace. Every rule with a kernel, in each dtype its kernel takes, at the values
    its declaration gives the tests (``test_value``: SGD's and RMSprop's momentum, so that their buffers
    exist), and with int8 and int4 states of fp32 params where it keeps states. AdamW's and Tiger's
    further formats: bf16 and fp16 params rounded stochastically, fp32 params with bf16 states, int8
    states of stochastically rounded bf16 params, split masters of 32 and 24 bits. bf16 with cautious=True
    for each rule that declares it. A compile takes
    about 0.3 s on 2 cores, so every rule's every dtype costs seconds, not minutes."""
    from fusedoptim import optim

    for name, rule in optim.RULES.items():
        if not rule.has_kernel:
            continue  # its oracle alone serves it (SparseAdam): nothing to compile
        group = {spec.name: spec.test_value for spec in rule.arguments if spec.test_value is not None}
        for dtype in rule.dtypes:
            yield name, dtype, "", group, {}
            if dtype == torch.float32 and rule.state_names({**rule.defaults, **group}):
                for state_dtype in ("int8", "int4"):  # signed, companded, stochastic codes, by the state's kind
                    yield name, dtype, f" {state_dtype}", group, {"state_dtype": state_dtype}
        if "cautious" in rule.defaults:  # caution's reduce and masked update (SGD's with its momentum)
            yield name, torch.bfloat16, " cautious", {**group, "cautious": True}, {}
    for name in ("AdamW", "Tiger"):
        for dtype in (torch.bfloat16, torch.float16):
            yield name, dtype, " stochastic", {}, {"stochastic_rounding": True}
        yield name, torch.float32, " bf16 states stochastic", {}, {"state_dtype": torch.bfloat16,
                                                                   "stochastic_rounding": True}
        yield name, torch.bfloat16, " int8 stochastic", {}, {"state_dtype": "int8", "stochastic_rounding": True}
        for bits in (32, 24):
            yield name, torch.bfloat16, f" master {bits}", {}, {"master_weight_bits": bits}


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
    """The tuner's smallest and largest candidates (fusedoptim/autotune/space.py) compile too, for AdamW in fp32
    and bf16: a table tuned on a GPU may pick any of them."""
    from fusedoptim.autotune.space import search_space

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
    """The majority vote's packing and voting kernels (fusedoptim/kernels/majority_vote.py) on 1000 fp32 gradients."""
    from fusedoptim.kernels import majority_vote

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
    parser.add_argument("--budget", action="store_true",
                        help="only the storage formats of tests/test_alu_budget.py (budget_cases)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    driver.set_active(CompileOnlyDriver(GPUTarget("cuda", args.arch, 32)))

    from fusedoptim import autotune
    from fusedoptim import optim
    import fusedoptim.optim.impl
    from fusedoptim.kernels import launcher

    optim.impl.INTERPRETED = True  # let impl="triton" take CPU tensors: they are only described, never read
    launcher.launch_config = lambda rule, dtype, numel, device: autotune.DEFAULT_CONFIGS[
        torch.empty((), dtype=dtype).element_size()]
    results = {}
    for name, dtype, label, group_options, options in (budget_cases() if args.budget else cases()):
        update, reduce = compile_step(optim, launcher, name, dtype, group_options, options)
        key = f"{name} {str(dtype)[6:]}{label}"
        (kernel,) = update
        results[key] = access_widths(kernel.asm["ptx"])
        results[key]["sass per element"] = sass_per_element(kernel, autotune.DEFAULT_CONFIGS[dtype.itemsize])
        for kernel in reduce:
            results[f"{key} reduce"] = access_widths(kernel.asm["ptx"])
    if not args.budget:
        results.update(search_space_extremes(optim, launcher))
        results.update(majority_vote_kernels())
        matrix_kernels = newton_schulz_kernels(CompileOnly)
    else:
        matrix_kernels = {}
    if args.json:
        print(json.dumps({**results, **matrix_kernels}))
        return
    print(f"global accesses in the PTX for sm_{args.arch} (per thread; full blocks first, then the masked tail), "
          "and the full block loop's SASS instructions per element")
    for key, widths in results.items():
        sass = widths.pop("sass per element", None)
        print(f"{key:>18}: " + ", ".join(f"{k} ×{v}" for k, v in sorted(widths.items()))
              + ("" if sass is None else f"; SASS {sass:.1f} per element"))
    if matrix_kernels:
        print(f"\nNewton–Schulz's bf16 products for sm_{args.arch}: tensor-core instructions in the code (PTX, SASS), "
              "registers per thread, spills, dynamic shared memory")
    for key, facts in matrix_kernels.items():
        instructions = ", ".join(f"{k} ×{v}" for k, v in facts.items() if "mma" in k.lower())
        print(f"{key:>42}: {instructions or 'no tensor-core instruction'}; {facts['registers']} registers, "
              f"{facts['local bytes']} B local ({facts['spill stores']} STL, {facts['spill loads']} LDL), "
              f"{facts['shared bytes']} B shared, {facts['num_warps']} warps, {facts['num_stages']} stages")


if __name__ == "__main__":
    main()
