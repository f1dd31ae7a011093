"""The profiles' figures, drawn with matplotlib (no display needed: the Agg backend writes PNGs)."""
import math

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402

from scripts.report import describe  # noqa: E402

MiB = 2**20


def label(row) -> str:
    """A memory row's optimizer: the rule, and whether it releases gradients."""
    return row["rule"] + (" + release" if row["gradient_release"] else "")


def memory_bars(rows, path):
    """Grouped bars per policy: for each optimizer, measured and analytic peak at each k."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    accumulations = sorted({r["accumulation"] for r in rows})
    figure, axes = pyplot.subplots(1, len(policies), figsize=(6 * len(policies), 4.5), squeeze=False)
    for axis, policy in zip(axes[0], policies):
        chosen = [r for r in rows if r["policy"] == policy]
        labels = list(dict.fromkeys(label(r) for r in chosen))
        width = 0.8 / (2 * len(accumulations))
        for j, k in enumerate(accumulations):
            by_label = {label(r): r for r in chosen if r["accumulation"] == k}
            for i, name in enumerate(labels):
                row = by_label[name]
                x = i + (2 * j - len(accumulations)) * width + width / 2
                axis.bar(x, row["measured_peak_bytes"] / MiB, width, color=f"C{j}",
                         label=f"k={k} measured" if i == 0 else None)
                bottom = 0
                for part, hatch in (("params", ""), ("grads", "//"), ("state", ".."), ("backward", "xx")):
                    height = row[f"{part}_bytes"] / MiB
                    axis.bar(x + width, height, width, bottom=bottom, color="white", edgecolor=f"C{j}",
                             hatch=hatch, label=f"analytic: {part}" if i == 0 and j == 0 else None)
                    bottom += height
        axis.set_xticks(range(len(labels)), labels)
        axis.set_ylabel("peak MiB")
        axis.set_title(policy)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Peak memory of training a GPT: measured, and params + grads held + state + backward")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def bandwidth_lines(rows, copy_gbps, directory, facts, implementations):
    """One figure per dtype: GB/s against size for each rule, one line per implementation, the copy
    bandwidth drawn as the ceiling."""
    paths = []
    measured = [r for r in rows if r["status"] == "measured" and r["size"] != "GPT list"]
    for dtype in dict.fromkeys(r["dtype"] for r in measured):
        chosen = [r for r in measured if r["dtype"] == dtype]
        rules = list(dict.fromkeys(r["rule"] for r in chosen))
        columns = min(4, len(rules))
        figure, axes = pyplot.subplots(math.ceil(len(rules) / columns), columns, squeeze=False,
                                       figsize=(4 * columns, 3.2 * math.ceil(len(rules) / columns)))
        for axis, rule in zip(axes.flat, rules):
            for k, implementation in enumerate(implementations):
                points = [(r["numel"], r["gbps"]) for r in chosen if r["rule"] == rule and r["implementation"] == implementation]
                if points:
                    axis.plot(*zip(*points), marker="o", markersize=3, color=f"C{k}", label=implementation)
            axis.axhline(copy_gbps, color="black", linestyle="--", linewidth=1, label="copy bandwidth")
            axis.set_xscale("log", base=2)
            axis.set_title(rule, fontsize=10)
            axis.set_xlabel("elements")
            axis.set_ylabel("GB/s")
        for axis in list(axes.flat)[len(rules):]:
            axis.axis("off")
        handles = {label: handle for axis in axes.flat for handle, label in zip(*axis.get_legend_handles_labels())}
        figure.legend(handles.values(), handles.keys(), loc="lower right", fontsize=8)
        figure.suptitle(f"Optimizer step bandwidth, {dtype}: {describe(facts)}", fontsize=9)
        figure.tight_layout()
        path = directory / f"bandwidth-{dtype}.png"
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        paths.append(path)
    return paths
