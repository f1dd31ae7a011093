r"""How low can optimizer state go: six rules × state precision on the tiny character GPT.

Issue 18, item 7: SGD with momentum, AdamW, Lion, Tiger, Adagrad and RMSprop, each with its
element-wise state kept in fp32, bf16, int8 and int4 (``state_dtype``), train the GPT of
tiny_transformer.py: its corpus, model (one init, copied for every run), training batches and
validation windows, imported from it. Within a rule every precision gets the same weights, batches
and lr: the runs differ only by how the state is stored.

The lr of each rule is chosen once, at fp32 state, by tiny_transformer's sweep: its three-point grids
(factors of 3) for its four rules, each point trained for tiny_transformer's 120 steps and judged by
the mean training loss over the last tenth of them, so that the lrs are the ones its figure shows
(Tiger 1e-2, Lion 1e-3, AdamW 1e-3, SGD 0.1). Adagrad and RMSprop are chosen by the same sweep over
grids centred where a five-point sweep made while writing this (factors of 3, 120 steps; Adagrad
3e-4 to 0.3, RMSprop 1e-4 to 1e-2) found each optimum: Adagrad 1e-3 to 1e-2, RMSprop 1e-4 to 1e-3.
Then every precision trains for STEPS steps at that lr, longer than the sweep so that the state has
time to matter. A sweep at STEPS itself would pick 3e-3 for AdamW and for Tiger (each at its grid's
edge); the lrs are not re-tuned per length or per precision, as the question is what the storage
alone changes at one lr.

Precisions, given to each optimizer as ``state_dtype`` with fp32 params:

- fp32: the params' own dtype, the baseline every other one is compared to;
- bf16: ``state_dtype=torch.bfloat16`` with ``stochastic_rounding=False`` (round to nearest): what
  the dtype alone gives, as torch.optim keeps a state in a dtype, and the same rounding as int8's
  momenta. Stochastic rounding (unbiased, for a state whose change per step is below half a bf16
  unit) changed nothing that matters here: tried while writing this, it moved the validation loss by
  at most 0.07 % for AdamW, SGD, Adagrad and RMSprop and 0.23 % for Lion from nearest; Tiger's moved
  by 1.3 %, but Tiger's moves by about 1 % under any change of rounding (nearest bf16 is 0.39 % below
  fp32, stochastic 0.89 % above);
- int8: ``state_dtype="int8"``, codes and one fp32 scale per 256 elements (docs/mixed-precision.md):
  nearest for momenta and second moments, stochastic codes for Adagrad's sum, as each State declares;
- int4: ``state_dtype="int4"``, where the optimizers take it.

Whether a precision runs is asked of the optimizers themselves: each is constructed with it, and a
precision it refuses is listed as not run, with the optimizer's own reason, in the table, the CSV and
the figure (at the time of writing every optimizer here takes int8 and int4).

Memory: after training, the bytes of every tensor in optimizer.state (int8 codes and their scales,
and the scalar states such as the step counts) per param of the model, against the registry's
Rule.state_bytes for the precision the run asked for.

The steps run the reference (pure PyTorch) update, as tiny_transformer's: under the CPU's Triton
interpreter a fused step takes about a second. The kernels equal the reference to fp32 rounding
(tests/test_parity.py), and with int8 state to the code where their fp32 values agree (one code
step apart on at most 10⁻³ of the elements), so the losses would be the same up to such steps.
"""
import copy
import sys
from typing import NamedTuple

import torch
from matplotlib import pyplot, ticker

from fusedoptim import optim
from scripts.gpt import GPTConfig
from scripts.report import markdown_table
from scripts.reproductions import common, tiny_transformer
from scripts.reproductions.tiny_transformer import Contender

NAME = "state_precision"
CLAIM = ("Optimizer state stored in int8 trains the tiny character GPT to within 1 % of fp32 state's validation "
         "loss for AdamW and Lion, and within 2 % for Tiger (whose loss moves by 1-2 % under any change of "
         "rounding), at about a quarter of the bytes")

STEPS = 400  # the comparison's length: 3⅓ times tiny_transformer's, 4 to 10 s a run on one shared core
SELECTION_STEPS = 120  # tiny_transformer's run length, where its sweep chose its lrs


class Precision(NamedTuple):
    label: str
    state_dtype: object  # the optimizers' state_dtype argument
    stochastic_rounding: bool


FP32 = Precision("fp32", torch.float32, False)
LOWER_PRECISIONS = (Precision("bf16", torch.bfloat16, False), Precision("int8", "int8", False),
                    Precision("int4", "int4", False))

CONTENDERS = {
    **tiny_transformer.CONTENDERS,
    "Adagrad": Contender("Adagrad", lambda model, lr, impl, **options: optim.Adagrad(
        model.parameters(), lr=lr, impl=impl, **options), (1e-3, 3e-3, 1e-2)),
    "RMSprop": Contender("RMSprop", lambda model, lr, impl, **options: optim.RMSprop(
        model.parameters(), lr=lr, impl=impl, **options), (1e-4, 3e-4, 1e-3)),
}


def refusal(contender: Contender, precision: Precision, lr: float, initial, impl: str):
    """None where the rule's optimizer takes ``precision``, else its reason for refusing it."""
    try:
        contender.make(copy.deepcopy(initial), lr, impl, state_dtype=precision.state_dtype,
                       stochastic_rounding=precision.stochastic_rounding)
    except ValueError as error:
        return str(error)
    return None


def choose_learning_rates(learning_rates: dict, initial, corpus, batch: int, context: int, seed: int,
                          impl: str) -> tuple:
    """(name -> the lr of its grid with the lowest final training loss at fp32 over SELECTION_STEPS
    (tiny_transformer's sweep), name -> the sweep's runs); a grid of one lr is taken as it is, untrained."""
    grids = {name: grid for name, grid in learning_rates.items() if len(grid) > 1}
    batches = tiny_transformer.training_batches(corpus.train, SELECTION_STEPS, batch, context, seed)
    windows = tiny_transformer.validation_windows(corpus.validation, context)
    sweeps = tiny_transformer.sweep(grids, initial, batches, windows, impl, CONTENDERS)
    chosen = {name: sweeps[name][0]["lr"] if name in sweeps else grid[0] for name, grid in learning_rates.items()}
    return chosen, sweeps


def run(out=None, steps: int = STEPS, batch: int = 16, context: int = 32, width: int = 64, blocks: int = 2,
        heads: int = 2, learning_rates: dict = None, precisions: tuple = LOWER_PRECISIONS, impl: str = "reference",
        seed: int = 0) -> dict:
    """``learning_rates``: rule -> the lrs to choose from (default each CONTENDERS grid); ``precisions``:
    those compared with fp32 state (default bf16, int8, int4)."""
    learning_rates = learning_rates or {name: contender.learning_rates for name, contender in CONTENDERS.items()}
    unknown = set(learning_rates) - set(CONTENDERS)
    if unknown:
        raise ValueError(f"learning_rates: no rule named {sorted(unknown)}; the rules are {list(CONTENDERS)}")
    corpus = tiny_transformer.load_corpus()
    config = GPTConfig(vocab=len(corpus.vocabulary), context=context, width=width, blocks=blocks, heads=heads)
    initial = tiny_transformer.make_model(config, seed)
    params = sum(p.numel() for p in initial.parameters())
    batches = tiny_transformer.training_batches(corpus.train, steps, batch, context, seed)
    windows = tiny_transformer.validation_windows(corpus.validation, context)
    runs, not_run = {}, {}
    with common.one_thread():
        chosen, sweeps = choose_learning_rates(learning_rates, initial, corpus, batch, context, seed, impl)
        for name, lr in chosen.items():
            runs[name] = {}
            for precision in (FP32, *precisions):
                reason = refusal(CONTENDERS[name], precision, lr, initial, impl)
                if reason is not None:
                    not_run.setdefault(precision.label, {})[name] = reason
                    continue
                trained = tiny_transformer.train(CONTENDERS[name], lr, initial, batches, windows, impl,
                                                 precision.state_dtype, precision.stochastic_rounding)
                runs[name][precision.label] = dict(trained, precision=precision,
                                                   measured_bytes_per_param=trained["measured_state_bytes"] / params,
                                                   analytic_bytes_per_param=trained["analytic_state_bytes"] / params)
            for trained in runs[name].values():
                trained["relative_to_fp32"] = trained["validation_loss"] / runs[name][FP32.label]["validation_loss"] - 1
    results = dict(runs=runs, not_run=not_run, sweeps=sweeps, learning_rates=chosen, params=params, steps=steps,
                   initial_weights=tiny_transformer.fingerprint(initial), impl=impl)
    figure = draw(results, f"state precision: {params:,}-param GPT on {tiny_transformer.CORPUS.name}, {steps} steps "
                           f"of {batch}×{context} chars, impl={impl}")
    common.save(NAME, figure, csv_rows(results), out)
    print(table(results))
    return results


def refused_line(label: str, reasons: dict) -> str:
    """One line per refused precision: which rules, and the first reason (the rest of each says what
    to do instead), without the rule's name in front."""
    reason = next(iter(reasons.values())).split(": ", 1)[-1].split(";")[0]
    return f"{label} not run ({', '.join(reasons)}): {reason}"


def draw(results: dict, title: str):
    figure, axes = pyplot.subplots(figsize=(10, 6))
    for name, by_precision in results["runs"].items():
        trained = sorted(by_precision.values(), key=lambda run: run["measured_bytes_per_param"])
        line, = axes.plot([run["measured_bytes_per_param"] for run in trained],
                          [run["validation_loss"] for run in trained], "o-",
                          label=f"{name}, lr {results['learning_rates'][name]:g}")
        for run in trained:
            axes.annotate(run["precision"].label, (run["measured_bytes_per_param"], run["validation_loss"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
    analytic = [(run["analytic_bytes_per_param"], run["validation_loss"])
                for by_precision in results["runs"].values() for run in by_precision.values()]
    axes.plot(*zip(*analytic), "k+", markersize=10, label="at the bytes of Rule.state_bytes (analytic)")
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 1, 2, 4, 8 bytes rather than powers of 2
    axes.set(xlabel="optimizer state bytes per param, measured (codes, scales and scalar states counted)",
             ylabel="validation loss after training (nats/char)", title=title)
    axes.legend(fontsize=8, loc="center right")
    for row, (label, reasons) in enumerate(results["not_run"].items()):
        figure.text(0.01, 0.03 + 0.025 * row, refused_line(label, reasons), fontsize=7, color="firebrick")
    figure.tight_layout(rect=(0, 0.04 + 0.025 * len(results["not_run"]), 1, 1))
    return figure


def csv_rows(results: dict) -> list:
    rows = [dict(kind="lr sweep", optimizer=name, lr=trained["lr"], steps=SELECTION_STEPS, precision=FP32.label,
                 chosen=trained is sweeps[0], final_train_loss=trained["final_train_loss"],
                 validation_loss=trained["validation_loss"])
            for name, sweeps in results["sweeps"].items() for trained in sweeps]
    rows += [dict(kind="run", optimizer=name, lr=trained["lr"], steps=results["steps"], precision=label,
                  state_dtype=str(trained["precision"].state_dtype),
                  stochastic_rounding=trained["precision"].stochastic_rounding, impl=results["impl"],
                  final_train_loss=trained["final_train_loss"], validation_loss=trained["validation_loss"],
                  relative_to_fp32=trained["relative_to_fp32"], measured_state_bytes=trained["measured_state_bytes"],
                  analytic_state_bytes=trained["analytic_state_bytes"],
                  measured_bytes_per_param=trained["measured_bytes_per_param"],
                  analytic_bytes_per_param=trained["analytic_bytes_per_param"],
                  initial_weights=trained["initial_weights"])
             for name, by_precision in results["runs"].items() for label, trained in by_precision.items()]
    rows += [dict(kind="not run", optimizer=name, precision=label, reason=reason)
             for label, reasons in results["not_run"].items() for name, reason in reasons.items()]
    return rows


def table(results: dict) -> str:
    """The markdown table of docs/reproductions.md: a row per run, then a line per refused precision."""
    rows = [(name, trained) for name, by_precision in results["runs"].items() for trained in by_precision.values()]
    columns = {
        "rule": lambda row: row[0],
        "lr": lambda row: f"{row[1]['lr']:g}",
        "state": lambda row: row[1]["precision"].label,
        "validation loss": lambda row: f"{row[1]['validation_loss']:.4f}",
        "vs fp32": lambda row: f"{100 * row[1]['relative_to_fp32']:+.2f} %",
        "state bytes/param, measured": lambda row: f"{row[1]['measured_bytes_per_param']:.4f}",
        "analytic (Rule.state_bytes)": lambda row: f"{row[1]['analytic_bytes_per_param']:.4f}",
    }
    lines = [markdown_table(rows, columns)]
    lines += [f"\n{refused_line(label, reasons)}" for label, reasons in results["not_run"].items()]
    return "\n".join(lines) + (f"\n\n{results['params']:,} params, {results['steps']} steps, impl={results['impl']}; "
                               f"lr chosen at fp32 over {SELECTION_STEPS} steps")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
