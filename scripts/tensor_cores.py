"""What a compiled matrix kernel does with the tensor cores, registers and shared memory, read from the
compiled code (no GPU): for scripts/compile_for_gpu.py, which compiles Muon's Newton–Schulz kernels
(fusedoptim/kernels/newton_schulz.py) here through their real launchers, at their GPU tiles.

- tensor-core instructions: wgmma (Hopper's warp-group MMA) or mma.sync in the PTX, HGMMA or HMMA in
  the SASS, each with its count in the kernel's code (static, not executed: the K loop runs them once
  per BLOCK_K step);
- registers per thread and local memory (spills) from the cubin, as `cuobjdump --dump-resource-usage`
  (triton's bundled one) reports them: the figures the driver's n_regs / n_spills would give on a GPU;
  the spill stores and loads (STL, LDL) counted in the SASS beside them;
- shared memory: the dynamic shared memory triton asks for at launch (its pipelined operand buffers,
  ``metadata.shared``), in bytes.
"""
import re
import subprocess
import tempfile
from collections import Counter

import torch


def tensor_core_instructions(kernel) -> dict:
    """{instruction: count} of the MMA instructions in the PTX and the SASS."""
    ptx = Counter(re.findall(r"\b(wgmma\.mma_async\S*|mma\.sync\S*)", kernel.asm["ptx"]))
    sass = Counter(re.findall(r"\b(HGMMA\.\S+|HMMA\.\S+)", kernel.asm["sass"]))
    return {**ptx, **sass}


def resource_usage(kernel) -> dict:
    """Registers per thread, local (spilled) bytes, spill instructions and shared memory of a compiled kernel."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|LOCAL|STACK):(\d+)", usage))
    spills = Counter(re.findall(r"\b(STL|LDL)\b", kernel.asm["sass"]))
    return {"registers": int(found["REG"]), "local bytes": int(found["LOCAL"]), "stack bytes": int(found["STACK"]),
            "spill stores": spills["STL"], "spill loads": spills["LDL"], "shared bytes": kernel.metadata.shared,
            "num_warps": kernel.metadata.num_warps, "num_stages": kernel.metadata.num_stages}


def newton_schulz_kernels(compile_only) -> dict:
    """Muon's three matrix products compiled through ``newton_schulz`` itself (its strides, dtypes, flags),
    for a wide and a tall stack of fp32 matrices (2 × 256 × 512 and 2 × 512 × 256: the tall one is iterated
    transposed, a strided view) with 2 steps, so the first step's product writes bf16 and the last the
    param's dtype. ``compile_only``: scripts.compile_for_gpu.CompileOnly."""
    from fusedoptim.kernels import newton_schulz as ns

    names = ("sum_of_squares_kernel", "normalize_kernel", "symmetric_product_kernel", "newton_schulz_step_kernel")
    originals = {name: getattr(ns, name) for name in names}
    results = {}
    try:
        for orientation, shape in (("wide", (2, 256, 512)), ("tall", (2, 512, 256))):
            stand_ins = {name: compile_only(kernel) for name, kernel in originals.items()}
            for name, stand_in in stand_ins.items():
                setattr(ns, name, stand_in)
            stack = torch.zeros(shape)
            ns.newton_schulz(stack, stack, (3.4445, -4.7750, 2.0315), steps=2, eps=1e-7)
            gram, polynomial = stand_ins["symmetric_product_kernel"].compiled[:2]
            step, last = stand_ins["newton_schulz_step_kernel"].compiled
            for label, kernel in (("X·Xᵀ", gram), ("b·A + c·A·A", polynomial), ("a·X + B·X", step),
                                  ("a·X + B·X, last (fp32 out)", last)):
                results[f"Newton–Schulz {orientation} {label}"] = {**tensor_core_instructions(kernel),
                                                                    **resource_usage(kernel)}
    finally:
        for name, kernel in originals.items():
            setattr(ns, name, kernel)
    return results
