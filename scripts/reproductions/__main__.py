"""Run every reproduction (or those named) and write their figures and tables under runs/reproductions/
(untracked), or under --out: `--out reports/reproductions` rewrites the committed ones. A reproduction with
its own options (``add_arguments(parser)``, e.g. race's --rules and --tasks) takes them after its name."""
import argparse
import importlib
import pkgutil
import time

import scripts.reproductions as package
from scripts.report import written
from scripts.reproductions import common
from scripts.reproductions.common import OUT_HELP, output_directory

MODULES = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in ("common", "__main__"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.reproductions", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"which to run (default all): {', '.join(MODULES)}")
    parser.add_argument("--out", help=OUT_HELP)
    arguments, rest = parser.parse_known_args(argv)
    unknown = sorted(set(arguments.names) - set(MODULES))
    if unknown:
        parser.error(f"no reproduction named {', '.join(unknown)}; the reproductions are {', '.join(MODULES)}")
    names = arguments.names or MODULES
    modules = {name: importlib.import_module(f"scripts.reproductions.{name}") for name in names}
    options = {}
    for name, module in modules.items():  # each module's own options, taken from what the main parser left
        options[name], rest = common.own_options(module, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)} (no reproduction named takes them)")
    for name, module in modules.items():
        start = time.perf_counter()
        print(f"== {name}: {module.CLAIM}")
        module.run(arguments.out, **options[name])
        print(f"   ({time.perf_counter() - start:.1f} s)")
    print(written(output_directory(arguments.out), [f"{name}.png, {name}.csv" for name in names]))


if __name__ == "__main__":
    main()
