"""The compiled path, which the interpreter never takes: every rule's kernel compiles for Hopper
(sm_90) with this machine's triton, a full block of an aligned launch moves every tensor with
128-bit accesses, and Muon's Newton–Schulz products run on the tensor cores without spilling. Runs
scripts/compile_for_gpu.py once, in a process of its own, without the interpreter."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusedoptim import optim
from fusedoptim.autotune import DEFAULT_CONFIGS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "scripts/compile_for_gpu.py", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_newton_schulz_products_use_tensor_cores_and_do_not_spill_on_sm90(compiled):
    # X·Xᵀ and A·A (the symmetric kernel, with and without its addend) and a·X + B·X (the general
    # product, writing bf16 and, last, the param's dtype), for a wide stack and a tall one (iterated
    # through a transposed view): each is bf16 tl.dots at the GPU tiles.
    products = {key: facts for key, facts in compiled.items() if key.startswith("Newton–Schulz")}
    assert len(products) == 8, sorted(products)
    for key, facts in products.items():
        ptx = sum(count for name, count in facts.items() if name.startswith(("wgmma.mma_async", "mma.sync")))
        sass = sum(count for name, count in facts.items() if name.startswith(("HGMMA.", "HMMA.")))
        assert ptx > 0 and sass > 0, (key, facts)
        assert facts["local bytes"] == facts["spill stores"] == facts["spill loads"] == 0, (key, facts)


def test_full_blocks_use_128_bit_accesses_on_sm90(compiled):
    widths = compiled
    assert widths["SGDHD float32 reduce"].get("ld.global.v4.b32") == 4, widths["SGDHD float32 reduce"]
    for name, rule in optim.RULES.items():
        if not rule.has_kernel:
            continue  # nothing of it compiles (SparseAdam: its reference alone serves it)
        n_states = len(rule.state_names(rule.defaults))
        for dtype in rule.dtypes:
            config = DEFAULT_CONFIGS[dtype.itemsize]
            threads = 32 * config.num_warps
            vectors_per_tensor = config.block_size * dtype.itemsize // (16 * threads)
            found = widths[f"{name} {str(dtype)[6:]}"]
            # θ and g at least, each state at most (the compiler drops a state the math only writes,
            # as SGDHD's g_prev); every write-back vectorized.
            loads = found.get("ld.global.v4.b32", 0)
            assert 2 * vectors_per_tensor <= loads <= vectors_per_tensor * (2 + n_states), (name, dtype, found)
            assert found.get("st.global.v4.b32") == vectors_per_tensor * (1 + n_states), (name, dtype, found)
    # Tiger's kernel variants and GradScaler's steps keep every vector access: the per-row lr is a
    # gather of its own, stochastic rounding only changes the values stored, and AMP adds two scalar
    # loads (the inverse scale, found_inf).
    for variant, base in (("Tiger float32 embedding", "Tiger float32"), ("Tiger bfloat16 stochastic", "Tiger bfloat16"),
                          ("Tiger float16 stochastic", "Tiger float16"), ("AdamW float32 amp", "AdamW float32"),
                          ("AdamW bfloat16 amp", "AdamW bfloat16"), ("SGDHD float32 amp reduce", "SGDHD float32 reduce")):
        for access in ("ld.global.v4.b32", "st.global.v4.b32"):
            assert widths[variant].get(access) == widths[base].get(access), (variant, widths[variant])
    # The tuner's extreme candidates keep every write-back vectorized: vectors per tensor follow the
    # block size and the warps (fusedoptim/autotune/space.py), and AdamW writes θ and its two moments.
    from fusedoptim.autotune.space import search_space
    for dtype in (torch.float32, torch.bfloat16):
        space = sorted(search_space(dtype), key=lambda c: (c.block_size, c.blocks_per_program, c.num_warps))
        for label, config in (("smallest", space[0]), ("largest", space[-1])):
            vectors_per_tensor = config.block_size * dtype.itemsize // (16 * 32 * config.num_warps)
            found = widths[f"AdamW {str(dtype)[6:]} {label} candidate"]
            assert found.get("st.global.v4.b32") == 3 * vectors_per_tensor, (label, dtype, found)
    # Quantized states compile (dequantized and requantized in registers, a scale per block) and θ keeps
    # its vector stores; in a full fp32 block each thread's 8 int8 codes of a state are written as one
    # 8-byte vector, its 4 bytes of int4 codes (nibbles packed across lanes) byte by byte.
    for name in ("Adam", "Adagrad", "SGDHD"):
        n_states = len(optim.RULES[name].state_names(optim.RULES[name].defaults))
        int8, int4 = widths[f"{name} float32 int8"], widths[f"{name} float32 int4"]
        assert int8.get("st.global.v2.b32") == n_states and int8.get("st.global.v4.b32") == 2, (name, int8)
        assert int4.get("st.global.b8") == 8 * n_states and int4.get("st.global.v4.b32") == 2, (name, int4)
    # The majority vote's kernels compile; the packing writes one word per thread-row, the vote one value.
    assert widths["majority vote pack"].get("st.global.b32") and widths["majority vote vote"].get("st.global.b32")
