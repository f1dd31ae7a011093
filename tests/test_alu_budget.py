"""Every kernel within the ALU budget (issue 18, item 4; issue 25, item 6): compiled for Hopper (sm_90), each
storage format's full-block loop issues no more SASS instructions per element than the memory
system leaves time for at H200's bandwidth. Runs scripts/compile_for_gpu.py --budget in a process of
its own, without the interpreter (about 45 s of compiles on 2 cores: every rule's kernel in each of its
dtypes and with int8 and int4 states, and AdamW's and Tiger's further formats)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from fusedoptim import optim
from scripts.compile_for_gpu import budget_cases

ROOT = Path(__file__).resolve().parent.parent

# The budget: an H200 moves 4.3e12 B/s, so a step of b bytes per element (Rule.bytes_per_param) runs
# 4.3e12 / b elements per second; in that time its 132 SMs issue 4 warp instructions per cycle each at
# 1.98 GHz, 32 threads a warp: 132 · 4 · 1.98e9 · 32 = 3.35e13 thread-instructions per second, so
# budget = 3.35e13 / (4.3e12 / b) = 7.78 · b instructions per element (AdamW bf16, 14 B: 108.9).
BANDWIDTH = 4.3e12
ISSUE_RATE = 132 * 4 * 1.98e9 * 32

def bytes_per_element(name, dtype, group_options, options):
    """Bytes per element of the group compiled: its options decide which states exist (SGD's buffer)."""
    rule = optim.RULES[name]
    return rule.bytes_per_param({**rule.defaults, **group_options}, dtype, options.get("state_dtype"),
                                master_weight_bits=options.get("master_weight_bits"))


def test_every_storage_format_fits_its_alu_budget_on_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "scripts/compile_for_gpu.py", "--budget", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    rows, failures = [], []
    for name, dtype, label, group_options, options in budget_cases():
        key = f"{name} {str(dtype)[6:]}{label}"
        measured = found[key]["sass per element"]
        budget = ISSUE_RATE / (BANDWIDTH / bytes_per_element(name, dtype, group_options, options))
        rows.append(f"{key:>34}: {measured:7.3f} SASS per element, budget {budget:6.1f}")
        if measured > budget:
            failures.append(key)
    print("\n".join(rows))
    assert not failures, "over the budget:\n" + "\n".join(r for r in rows if r.split(":")[0].strip() in failures)
