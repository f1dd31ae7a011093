"""The rows of the step-overhead profile (scripts/step_overhead.py), whichever machine measures them: what
they compare (our rules, torch's AdamW, the gradient modes), the goal each is judged by, and the tables and
files they become. The CPU measurement is in scripts/step_overhead.py, the GPU one in
scripts/step_overhead_gpu.py."""
from dataclasses import dataclass, field

from fusedoptim import optim
from scripts.report import report_directory, write_csv

MODES = ("same", "fresh")
WARM_UP_STEPS = 2  # the first step makes the state; the second runs as every later one
GOAL_RATIO = 0.5  # ours at most half of torch fused AdamW's host time
FUSED, FOREACH, COMPILED = "torch fused", "torch foreach", "torch.compile(torch)"
OURS = "ours"
OURS_COMPILED = "ours, compiled"  # torch.compile(step, fullgraph=True): one op, whose graph guards every param


def under_goal(implementation: str) -> bool:
    """The rows the goal is about: ours, and on a GPU each way of running ours; on a CPU the compiled step
    is shown beside the eager one, not judged (its extra host time is torch's guards and version bumps)."""
    return implementation.startswith(OURS) and implementation != OURS_COMPILED


@dataclass(frozen=True)
class Case:
    """One of our optimizers: a registry rule with some of its hyperparameters changed."""
    label: str
    rule: str
    overrides: dict = field(default_factory=dict)

    def make(self, params, **extra):
        return getattr(optim, self.rule)(params, **{**self.overrides, **extra}, impl="triton")

    @property
    def nonnegative(self) -> bool:
        return optim.RULES[self.rule].nonnegative_params

    @property
    def default_lr(self) -> float:
        return float(optim.RULES[self.rule].defaults["lr"])

    @property
    def torch_twin(self):
        """The torch.optim class this rule matches (the registry row's torch_twin), or None."""
        return optim.RULES[self.rule].torch_twin

    def make_twin_foreach(self, params):
        """torch's foreach implementation of the same rule: its twin with our default lr and the case's overrides."""
        return self.torch_twin(params, **{"lr": self.default_lr, **self.overrides}, foreach=True)


def cases() -> dict:
    """label -> Case: every rule with a kernel (each runs impl="triton") with its defaults, and SGD with
    momentum (the buffer made by the first step)."""
    table = {name: Case(name, name) for name, rule in optim.RULES.items() if rule.has_kernel}
    table["SGD (momentum)"] = Case("SGD (momentum)", "SGD", {"momentum": 0.9})
    return table


ALIASES = {"SGD-momentum": "SGD (momentum)"}  # the label without a space, for the command line


def resolve_rules(names) -> list:
    table = cases()
    labels = list(table) if names is None else [ALIASES.get(name, name) for name in names]
    unknown = [label for label in labels if label not in table]
    without_kernel = [label for label in unknown if label in optim.RULES]
    if without_kernel:
        raise ValueError(f"{without_kernel} have no fused kernel, whose host time this profile measures; leave "
                         "them out")
    if unknown:
        raise ValueError(f"unknown rules {unknown}; known: {list(table)} (or SGD-momentum)")
    return [table[label] for label in labels]


def failure(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"failed: {type(error).__name__}" + (f": {text[0][:200]}" if text else "")


def fresh_grads(params):
    """New grad tensors (new objects, the same values), as a backward after zero_grad(set_to_none=True)."""
    return [p.grad.clone() for p in params]


def add_ratios(rows) -> list:
    """Each measured row's median over torch fused AdamW's median of the same tensors and gradient mode; and
    each of ours over torch's foreach implementation of the same rule (its twin), where one was measured."""
    fused = {(r["tensors"], r["gradients"]): r["median_ms"] for r in rows
             if r["implementation"] == FUSED and r["status"] == "measured"}
    foreach = {(r["rule"], r["tensors"], r["gradients"]): r["median_ms"] for r in rows
               if r["implementation"] == FOREACH and r["status"] == "measured"}
    for row in rows:
        baseline = fused.get((row["tensors"], row["gradients"]))
        if row["status"] == "measured" and baseline:
            row["ratio_to_torch_fused"] = row["median_ms"] / baseline
            if under_goal(row["implementation"]):
                row["goal"] = "met" if row["ratio_to_torch_fused"] <= GOAL_RATIO else "not met"
        elif under_goal(row["implementation"]):
            row["goal"] = "not measured"
        twin = foreach.get((row["rule"], row["tensors"], row["gradients"]))
        if row["status"] == "measured" and twin and row["implementation"].startswith(OURS):
            row["ratio_to_twin_foreach"] = row["median_ms"] / twin
    return rows


# ---------------------------------------------------------------------------------------------------
# Reports


def cell(row, key, spec):
    value = row.get(key, "")
    return format(value, spec) if isinstance(value, float) else str(value)


def columns(host=False) -> dict:
    table = {"rule": lambda r: r["rule"], "implementation": lambda r: r["implementation"],
             "tensors": lambda r: r["tensors"], "gradients": lambda r: r["gradients"],
             "median ms": lambda r: cell(r, "median_ms", ".3f") if r["status"] == "measured" else r["status"]}
    if host:
        table["host ms"] = lambda r: cell(r, "host_ms", ".3f")
    table.update({"µs / tensor": lambda r: cell(r, "us_per_tensor", ".2f"),
                  "ratio to torch fused": lambda r: cell(r, "ratio_to_torch_fused", ".2f"),
                  "ratio to torch foreach, same rule": lambda r: cell(r, "ratio_to_twin_foreach", ".2f"),
                  f"goal ≤ {GOAL_RATIO}": lambda r: r.get("goal", "")})
    if not host:
        table["launches"] = lambda r: r.get("launches_per_step", "")
    return table


def ordered(rows) -> list:
    """Grouped by (tensors, mode), torch's rows first."""
    rank = {FUSED: 0, FOREACH: 1, COMPILED: 2}
    return sorted(rows, key=lambda r: (r["tensors"], MODES.index(r["gradients"]),
                                       rank.get(r["implementation"], 3)))


def text_table(rows, host=False) -> str:
    spec = columns(host)
    lines = [list(spec)] + [[str(f(r)) for f in spec.values()] for r in ordered(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(spec))]
    text = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def goal_lines(rows) -> list:
    ours = [r for r in rows if under_goal(r["implementation"])]
    met = [r for r in ours if r.get("goal") == "met"]
    lines = [f"Goal: each of our steps at most {GOAL_RATIO}× torch fused AdamW's time on the same tensors "
             f"and gradient mode. Met by {len(met)} of {len(ours)} rows."]
    twins = [r["ratio_to_twin_foreach"] for r in ours if "ratio_to_twin_foreach" in r]
    if twins:
        lines.append(f"Against torch's foreach implementation of the same rule (its twin, {len(twins)} rows): "
                     f"{min(twins):.2f}–{max(twins):.2f}× its time.")
    missed = [r for r in ours if r.get("goal") != "met"]
    if missed:
        worst = [r for r in missed if "ratio_to_torch_fused" in r]
        if worst:
            r = max(worst, key=lambda r: r["ratio_to_torch_fused"])
            lines.append(f"Furthest from it: {r['rule']} ({r['implementation']}) at {r['tensors']} tensors, "
                         f"{r['gradients']} gradients: {r['ratio_to_torch_fused']:.2f}×.")
        failed = [r for r in missed if r["status"] != "measured"]
        lines += [f"{r['rule']} ({r['implementation']}), {r['tensors']} tensors, {r['gradients']}: {r['status']}"
                  for r in failed]
    return lines


def write_reports(facts, rows, out, text):
    directory = report_directory(facts, out)
    write_csv(directory / "step_overhead.csv", facts, ordered(rows))
    (directory / "step_overhead.md").write_text(text)
    return directory

