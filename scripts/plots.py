"""The profiles' figures, drawn with matplotlib (no display needed: the Agg backend writes PNGs).

What a figure could not measure on the machine it ran on is said in the figure itself, with the
reason: an implementation that ran nowhere is a legend entry ("triton: not measured, needs a GPU …"),
one that could not run one rule a note under that rule's plot, what the whole run left out a note
under the figure."""
import math
import textwrap

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from scripts.report import describe  # noqa: E402

MiB = 2**20


def label(row) -> str:
    """A memory row's optimizer: the rule, and whether it releases gradients."""
    return row["rule"] + (" + release" if row["gradient_release"] else "")


LINE_INCHES = 0.16  # a line of 8-point text


def add_footer(figure, notes=(), entries=()):
    """Makes the figure taller by what its footer needs and lays out the plots above it: a legend of
    ``entries`` ((handle, label) pairs), then ``notes`` (what was not measured here, and why), wrapped."""
    lines = [line for note in notes for line in textwrap.wrap(note, int(figure.get_figwidth() * 16))]
    notes_inches = LINE_INCHES * len(lines) + (0.1 if lines else 0)
    legend_inches = LINE_INCHES * sum(label.count("\n") + 1 for _, label in entries) + 0.3 if entries else 0
    footer = 0.05 + notes_inches + legend_inches
    total = figure.get_figheight() + footer
    figure.set_figheight(total)
    if lines:
        figure.text(0.01, 0.05 / total, "\n".join(lines), fontsize=8, va="bottom", ha="left")
    if entries:
        figure.legend(*zip(*entries), loc="lower left", bbox_to_anchor=(0.01, (0.05 + notes_inches) / total),
                      fontsize=8)
    figure.tight_layout(rect=(0, footer / total, 1, 1))


def memory_bars(rows, path, notes=()):
    """Grouped bars per policy: for each optimizer, measured and analytic peak at each k; ``notes``
    (what this machine could not measure, and why) under the bars."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    accumulations = sorted({r["accumulation"] for r in rows})
    figure, axes = pyplot.subplots(1, len(policies), figsize=(max(6 * len(policies), 9), 4.5), squeeze=False)
    for axis, policy in zip(axes[0], policies):
        chosen = [r for r in rows if r["policy"] == policy]
        labels = list(dict.fromkeys(label(r) for r in chosen))
        width = 0.8 / (2 * len(accumulations))
        for j, k in enumerate(accumulations):
            by_label = {label(r): r for r in chosen if r["accumulation"] == k}
            # An optimizer may have no row at this k (gradient release without accumulation only).
            drawn = [(i, by_label[name]) for i, name in enumerate(labels) if name in by_label]
            for n, (i, row) in enumerate(drawn):
                x = i + (2 * j - len(accumulations)) * width + width / 2
                axis.bar(x, row["measured_peak_bytes"] / MiB, width, color=f"C{j}",
                         label=f"k={k} measured" if n == 0 else None)
                bottom = 0
                for part, hatch in (("params", ""), ("grads", "//"), ("state", ".."), ("backward", "xx")):
                    height = row[f"{part}_bytes"] / MiB
                    axis.bar(x + width, height, width, bottom=bottom, color="white", edgecolor=f"C{j}",
                             hatch=hatch, label=f"analytic: {part}" if n == 0 and j == 0 else None)
                    bottom += height
        axis.set_xticks(range(len(labels)), labels)
        axis.set_ylabel("peak MiB")
        axis.set_title(policy)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Peak memory of training a GPT: measured, and params + grads held + state + backward")
    add_footer(figure, notes)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def unmeasured(rows, skipped, implementations):
    """Why each implementation has no line: (everywhere, per_rule). ``everywhere``: name -> reason for
    those measured for no rule (not run here, or unavailable for every rule); ``per_rule``: rule ->
    {reason: [names]} for those measured for other rules but not this one."""
    skipped = dict(skipped)
    measured = {(r["rule"], r["implementation"]) for r in rows if r["status"] == "measured"}
    everywhere, per_rule = {}, {}
    for name in implementations:
        reasons = {r["rule"]: r["status"] for r in rows if r["implementation"] == name and r["status"] != "measured"}
        if name in skipped:
            everywhere[name] = skipped[name]
        elif not any(implementation == name for _, implementation in measured):
            if reasons:
                everywhere[name] = "; ".join(dict.fromkeys(reasons.values()))
        else:
            for rule, reason in reasons.items():
                if (rule, name) not in measured:
                    per_rule.setdefault(rule, {}).setdefault(reason, []).append(name)
    return everywhere, per_rule


def bandwidth_lines(rows, copy_gbps, directory, facts, implementations, skipped=(), notes=(), labels=None):
    """One figure per dtype: GB/s against size for each rule, one line per implementation, the copy
    bandwidth drawn as the ceiling. Every implementation is in the legend: those not measured here
    with the reason (``skipped``: (name, reason) for those not run; the rows' status for those that
    could not run a rule); ``notes``: what else the run left out, under the plots; ``labels``: an
    implementation's name in the legend, where it is not its name in the rows."""
    labels = {name: (labels or {}).get(name, name) for name in implementations}
    paths = []
    measured = [r for r in rows if r["status"] == "measured" and r["size"] != "GPT list"]
    for dtype in dict.fromkeys(r["dtype"] for r in measured):
        chosen = [r for r in measured if r["dtype"] == dtype]
        everywhere, per_rule = unmeasured([r for r in rows if r["dtype"] == dtype and r["size"] != "GPT list"],
                                          skipped, implementations)
        rules = list(dict.fromkeys(r["rule"] for r in chosen))
        columns = min(4, len(rules))
        figure, axes = pyplot.subplots(math.ceil(len(rules) / columns), columns, squeeze=False,
                                       figsize=(max(4 * columns, 9), 3.2 * math.ceil(len(rules) / columns)))
        handles = {}
        for axis, rule in zip(axes.flat, rules):
            for k, implementation in enumerate(implementations):
                points = [(r["numel"], r["gbps"]) for r in chosen if r["rule"] == rule and r["implementation"] == implementation]
                if points:
                    line, = axis.plot(*zip(*points), marker="o", markersize=3, color=f"C{k}", label=implementation)
                    handles.setdefault(implementation, line)
            ceiling = axis.axhline(copy_gbps, color="black", linestyle="--", linewidth=1, label="copy bandwidth")
            axis.set_xscale("log", base=2)
            axis.set_title(rule, fontsize=10)
            missing = per_rule.get(rule, {})
            axis.set_xlabel("\n".join(["elements"] + [textwrap.fill(f"not measured: {', '.join(names)}: {reason}", 56)
                                                   for reason, names in missing.items()]),
                            fontsize=8 if missing else None)
            axis.set_ylabel("GB/s")
        for axis in list(axes.flat)[len(rules):]:
            axis.axis("off")
        # The legend: the implementations measured, the ceiling, then each implementation measured for
        # no rule here, in its colour, dotted, with the reason it has no line.
        entries = [(handles[name], labels[name]) for name in implementations if name in handles]
        entries.append((ceiling, "copy bandwidth"))
        entries += [(Line2D([], [], color=f"C{implementations.index(name)}", linestyle=":"),
                     textwrap.fill(f"{labels[name]}: not measured, {reason}", 100, subsequent_indent="    "))
                    for name, reason in everywhere.items()]
        figure.suptitle(f"Optimizer step bandwidth, {dtype}: {describe(facts)}", fontsize=9)
        add_footer(figure, notes, entries)
        path = directory / f"bandwidth-{dtype}.png"
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        paths.append(path)
    return paths
