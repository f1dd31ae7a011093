"""What every reproduction shares: where it writes, the facts each file carries, and its command line.

A reproduction is a module of this package with ``NAME``, a one-line ``CLAIM`` and ``run(out) -> dict``:
it computes its numbers, writes ``<NAME>.png`` and ``<NAME>.csv`` (every row with the machine's facts)
under ``out``, prints what it measured, and returns the numbers that its test asserts.

By default ``out`` is runs/reproductions/, which git ignores, so that reproducing leaves the checkout as it
was; ``--out reports/reproductions`` rewrites the committed figures that docs/reproductions.md shows.
"""
import argparse
import contextlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed: PNGs only
import torch  # noqa: E402

from scripts.report import RUNS, describe, machine, write_csv, written  # noqa: E402

DIRECTORY = RUNS / "reproductions"  # untracked; reports/reproductions/ holds the committed ones
OUT_HELP = ("output directory (default: runs/reproductions/, untracked; --out reports/reproductions rewrites "
            "the committed figures and tables)")


@contextlib.contextmanager
def one_thread():
    """The tensors of a reproduction are tiny: intra-op threads only add synchronisation, which on a
    shared 2-core CPU cost several times the work itself (sign_family: 1 min 42 s against 34 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def output_directory(out=None) -> Path:
    directory = Path(out) if out is not None else DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def facts() -> dict:
    """The reproductions run on the CPU: what they show does not depend on a GPU."""
    return machine(torch.device("cpu"))


def save(name: str, figure, rows: list, out=None) -> Path:
    """Write ``figure`` as <name>.png and ``rows`` as <name>.csv under the output directory."""
    from matplotlib import pyplot

    directory = output_directory(out)
    run_facts = facts()
    footer = describe({**run_facts, "triton_interpreter": False})
    if run_facts["triton_interpreter"]:
        footer += "; TRITON_INTERPRET=1: steps with impl 'auto' or 'triton' ran under the interpreter"
    figure.text(0.01, 0.005, footer, fontsize=6, color="grey")
    figure.savefig(directory / f"{name}.png", dpi=120)
    pyplot.close(figure)
    write_csv(directory / f"{name}.csv", run_facts, rows)
    return directory


def own_options(module, argv: list) -> tuple:
    """(the options ``module`` declares with its optional ``add_arguments(parser)``, as run()'s keywords,
    the arguments it did not take)."""
    if not hasattr(module, "add_arguments"):
        return {}, argv
    parser = argparse.ArgumentParser(add_help=False)
    module.add_arguments(parser)
    arguments, rest = parser.parse_known_args(argv)
    return {key: value for key, value in vars(arguments).items() if value is not None}, rest


def main(module, argv=None) -> dict:
    """The command line of one reproduction: ``python -m scripts.reproductions.<name> [--out DIR]`` and the
    options of its ``add_arguments(parser)``, if it has one."""
    parser = argparse.ArgumentParser(prog=f"python -m {module.__name__}", description=module.CLAIM)
    parser.add_argument("--out", help=OUT_HELP)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    arguments = parser.parse_args(argv)
    options = {key: value for key, value in vars(arguments).items() if key != "out" and value is not None}
    results = module.run(arguments.out, **options)
    print(written(output_directory(arguments.out), [f"{module.NAME}.png", f"{module.NAME}.csv"]))
    return results
