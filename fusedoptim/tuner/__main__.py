"""python -m fusedoptim.tuner: tune every rule × dtype × size bucket on this GPU and write its table.

Each candidate of fusedoptim/autotune/space.py is timed (triton.testing.do_bench, median) on a scratch optimizer
of one tensor per bucket; the fastest per rule, dtype and bucket is written to fusedoptim/autotune/tables/<gpu>.json
under this triton version, and a table of tuned against default times is printed.

Each candidate is one compilation per rule and dtype (72 of them), then one timing per bucket: to
keep a run short, narrow it with --rules, --dtypes and --buckets; runs merge into the same file.
Without a GPU, or under TRITON_INTERPRET=1, nothing is timed and the command says what launches use.
"""
import argparse
import datetime
import os
import sys

import torch
import triton
from tqdm import tqdm

from fusedoptim.autotune import default_config
from fusedoptim.autotune.space import search_space
from fusedoptim.autotune.table import device_file, write
from fusedoptim.optim.registry import RULES
from fusedoptim.tuner import do_bench_timer, tune

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUCKETS = (14, 18, 22, 26)  # 16 K to 64 M elements: from a bias to a large embedding table


def arguments(argv, rules):
    parser = argparse.ArgumentParser(prog="python -m fusedoptim.tuner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", nargs="+", choices=list(rules), default=list(rules), metavar="RULE",
                        help=f"rules to tune (default all: {' '.join(rules)})")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES),
                        help="storage dtypes (default all; each rule takes those it supports)")
    parser.add_argument("--buckets", nargs="+", type=int, default=list(BUCKETS), metavar="LOG2",
                        help=f"size buckets as log2 of the tensor size (default {' '.join(map(str, BUCKETS))})")
    parser.add_argument("--warmup-ms", type=float, default=5, help="do_bench warm-up per candidate (default 5)")
    parser.add_argument("--rep-ms", type=float, default=20, help="do_bench timing per candidate (default 20)")
    parser.add_argument("--out", help="table file (default fusedoptim/autotune/tables/<this gpu>.json, merged into)")
    return parser.parse_args(argv)


def untunable_reason():
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: Triton runs under the CPU interpreter, where nothing can be timed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def print_defaults():
    for name, dtype in DTYPES.items():
        print(f"  {name:9} {default_config(dtype)}")


def main(argv=None):
    options = arguments(argv, {name: rule for name, rule in RULES.items() if rule.has_kernel})  # what it times
    reason = untunable_reason()
    if reason is not None:
        print(f"autotune: nothing benchmarked: {reason}.\nOn a GPU with no table, every launch takes the "
              "default configuration:")
        print_defaults()
        print("Under the interpreter the configuration follows the tensor size (autotune.interpreter_config).")
        print("Run `python -m fusedoptim.tuner` on a machine with a CUDA GPU (without TRITON_INTERPRET) to tune it.")
        return 0
    device = torch.device("cuda")
    name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    work = [(RULES[r], DTYPES[d], b) for r in options.rules for d in options.dtypes for b in options.buckets
            if DTYPES[d] in RULES[r].dtypes]
    timer = do_bench_timer(options.warmup_ms, options.rep_ms)
    print(f"autotune: {name} (sm_{capability[0]}{capability[1]}), torch {torch.__version__}, triton "
          f"{triton.__version__}: {len(work)} rule × dtype × bucket, {len(search_space(torch.float32))} candidates each")
    entries = []
    with tqdm(total=sum(len(search_space(dtype)) for _, dtype, _ in work), unit="config") as progress:
        for rule, dtype, bucket in work:
            progress.set_description(f"{rule.name} {dtype} 2^{bucket}")
            entries.append(tune(rule, dtype, bucket, device, timer, progress=progress))
            torch.cuda.empty_cache()
    path = options.out or device_file(name)
    facts = dict(date=datetime.date.today().isoformat(), torch=torch.__version__)
    write(path, name, capability, triton.__version__, facts, entries)
    print(f"{'rule':11} {'dtype':9} {'size':>5} {'block':>6} {'blocks':>6} {'warps':>5} {'stages':>6} "
          f"{'ms':>9} {'default':>9} speed-up")
    for e in entries:
        print(f"{e['rule']:11} {e['dtype']:9} {'2^' + str(e['bucket']):>5} {e['block_size']:6} "
              f"{e['blocks_per_program']:6} {e['num_warps']:5} {e['num_stages']:6} {e['ms']:9.4f} "
              f"{e['default_ms']:9.4f} {e['default_ms'] / e['ms']:7.2f}×")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
