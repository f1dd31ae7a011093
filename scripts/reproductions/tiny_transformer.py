r"""Tiger, Lion, AdamW and SGD train the same tiny character-level GPT: loss curves and state memory.

The corpus, data/docutils_faq.txt (47,038 bytes, ASCII, verbatim): "Docutils FAQ (Frequently Asked
Questions)" by David Goodger and the Docutils contributors, revision 9077 of 2022-06-17, as shipped
in Debian's python3-docutils 0.19+dfsg-6 (/usr/share/doc/python3-docutils/FAQ.txt.gz; upstream
https://docutils.sourceforge.io/FAQ.html). Licence: public domain; the file's own header says
"Copyright: This document has been placed in the public domain.", and Debian's copyright file
records the Docutils dedication of its documents to the public domain. It is English prose with
reStructuredText markup: 96 distinct characters.

Seed 004_21bcd73060106028.txt (sections 5 and 6) says Lion keeps one state, the momentum, where AdamW
keeps two ("少缓存了一组参数v(所以更省显存)"), that Lion's lr must be about 10× smaller than AdamW's
for updates of the same size, as each component of sign(·) is ±1 (5.2), and that Tiger, Lion with
β1 = β2 = β, keeps only m (6.1) and takes a relative lr: half of it for biases and normalization
weights, lr·RMS(θ) for matrices (6.2.2). With η the lr, λ the decay, g the gradient
(/work/shared/RULES.md):

.. math::
    \text{AdamW: } m ← β_1 m + (1 − β_1) g,\; v ← β_2 v + (1 − β_2) g^2,\;
        θ ← θ(1 − ηλ) − η\,\hat m / (\sqrt{\hat v} + ε)
    \text{Lion: } θ ← θ(1 − ηλ) − η\,\mathrm{sign}(β_1 m + (1 − β_1) g),\; m ← β_2 m + (1 − β_2) g
    \text{Tiger: } m ← β m + (1 − β) g,\; θ ← θ − η'(\mathrm{sign}(m) + λ' θ),\;
        η' = η/2 \text{ (bias, norm)},\; η·\mathrm{RMS}(θ) \text{ (matrix; per row for embeddings)}
    \text{SGD with momentum: } b ← μ b + g,\; θ ← θ − η b

The task: predict the next character. The corpus's first 90% trains, the last 10% validates (in
non-overlapping windows). One GPT of scripts/gpt.py (2 blocks, 2 heads, width 64, context 32; its
head tied to the token embedding) is made once from a fixed seed and copied for every run, and every
run sees the same sequence of random training windows: runs differ only by the optimizer and its lr.

The lr of each optimizer is the best of a three-point grid (factors of 3), each point trained for
the full run and judged by its mean training loss over the last tenth of the steps, so that the
validation loss reported is not the one that chose it. The grids are centred where wider sweeps made
while writing this (200 steps, this set-up; AdamW 1e-3 to 3e-2, Lion 1e-4 to 3e-3, Tiger 3e-3 to
0.3, SGD 0.03 to 1) found each optimum: AdamW 1e-3 to 3e-3, Lion 1e-3, Tiger 1e-2, SGD 0.1 (0.3 and
1 gave NaN). Lion's is not the seed's 3 to 10 times below AdamW's: that ratio is for long runs, while
in a run this short Adam's m̂/√v̂ is still about ±1 per coordinate, a sign itself (the seed, section
5: "Adam早期的更新量也接近于sign"). Tiger's lr is relative: a matrix of GPT-2's initialisation (RMS
0.02) moves η·0.02 per step, so the seed's 1e-3 (meant for long runs) would barely move it in a few
hundred steps, while a relative lr that moves it as far as Lion's (0.05) makes its steps,
proportional to RMS(θ), compound: the norms grow geometrically and the loss blows up (at 3e-2 within
400 steps, at 0.1 within 200). Decays: AdamW 0.01 (the registry's default), Lion 0.1 (ten times
AdamW's, as the seed says, for a smaller lr), Tiger 0.01 (its default), SGD none; Lion (0.9, 0.99)
and Tiger β = 0.965 (the seed's choice for language), SGD momentum 0.9.

Memory: after training, the bytes of the tensors in optimizer.state (measured), against the
registry's Rule.state_bytes of each param group (analytic): AdamW holds two fp32 states per param,
Lion, Tiger and SGD one; scalar states add 4 bytes per tensor each (AdamW's step; Tiger's step and
nan_skips).

The steps run the reference (pure PyTorch) update by default: under the CPU's Triton interpreter a
fused step of these 108k params took about a second here, a hundred times the reference's 4 to 10 ms;
the kernels equal the reference to fp32 rounding (tests/test_parity.py), so the curves would be the
same. impl="auto" runs them (on a GPU; on a CPU under TRITON_INTERPRET=1, slowly).
"""
import copy
import hashlib
import math
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from matplotlib import pyplot

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from scripts.gpt import GPT, GPTConfig
from scripts.memory import tensor_bytes
from scripts.reproductions import common

NAME = "tiny_transformer"
CLAIM = ("On a tiny character-level GPT, Tiger, Lion, AdamW and SGD all learn the text, and Tiger and Lion keep "
         "one state per param where AdamW keeps two")

CORPUS = Path(__file__).resolve().parent / "data" / "docutils_faq.txt"
VALIDATION_FRACTION = 0.1
SMOOTHING = 10  # steps in the moving average of the plotted training loss


class Contender(NamedTuple):
    rule: str  # its row of optim.registry.RULES
    make: Callable  # (model, lr, impl, **options) -> optimizer; options: state_dtype, stochastic_rounding
    learning_rates: tuple  # the sweep


CONTENDERS = {
    "Tiger": Contender("Tiger", lambda model, lr, impl, **options: optim.Tiger(
        optim.tiger_param_groups(model), lr=lr, impl=impl, **options), (3e-3, 1e-2, 3e-2)),
    "Lion": Contender("Lion", lambda model, lr, impl, **options: optim.Lion(
        model.parameters(), lr=lr, weight_decay=0.1, impl=impl, **options), (3e-4, 1e-3, 3e-3)),
    "AdamW": Contender("AdamW", lambda model, lr, impl, **options: optim.AdamW(
        model.parameters(), lr=lr, weight_decay=0.01, impl=impl, **options), (3e-4, 1e-3, 3e-3)),
    "SGD": Contender("SGD", lambda model, lr, impl, **options: optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, impl=impl, **options), (0.03, 0.1, 0.3)),
}


class Corpus(NamedTuple):
    vocabulary: str  # the characters, sorted: a character's token is its index
    train: torch.Tensor
    validation: torch.Tensor


def load_corpus(path: Path = CORPUS) -> Corpus:
    text = path.read_text(encoding="utf-8")
    vocabulary = "".join(sorted(set(text)))
    index = {character: i for i, character in enumerate(vocabulary)}
    tokens = torch.tensor([index[character] for character in text])
    split = round(len(tokens) * (1 - VALIDATION_FRACTION))
    return Corpus(vocabulary, tokens[:split], tokens[split:])


def training_batches(train: torch.Tensor, steps: int, batch: int, context: int, seed: int) -> torch.Tensor:
    """(steps, batch, context + 1) random windows of the training text, the same for every optimizer."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(train) - context, (steps, batch), generator=generator)
    return train[starts.unsqueeze(-1) + torch.arange(context + 1)]


def validation_windows(validation: torch.Tensor, context: int) -> torch.Tensor:
    """The validation text cut into windows of context + 1 whose predicted characters do not overlap."""
    count = (len(validation) - 1) // context
    return validation[torch.arange(count).unsqueeze(-1) * context + torch.arange(context + 1)]


def unigram_cross_entropy(corpus: Corpus, windows: torch.Tensor) -> float:
    """The validation loss of predicting each character of ``windows`` that the model predicts by its
    training frequency (add-one smoothed): what a model knows that has learnt the counts, no context."""
    counts = torch.bincount(corpus.train, minlength=len(corpus.vocabulary)).double() + 1
    return -(counts / counts.sum()).log()[windows[:, 1:]].mean().item()


def make_model(config: GPTConfig, seed: int) -> GPT:
    with torch.random.fork_rng():  # the init draws from the global generator: leave it as it was
        torch.manual_seed(seed)
        return GPT(config)


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every param's bytes: equal fingerprints, equal weights."""
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.detach().numpy().tobytes())
    return digest.hexdigest()[:16]


def state_memory(rule_name: str, optimizer, state_dtype=None) -> dict:
    """The optimizer's state bytes, measured from optimizer.state and from the registry's model.
    ``state_dtype``: the precision the run asked for (None: the params' own), which the model counts, so
    that an optimizer holding another precision than asked shows as a mismatch."""
    rule = RULES[rule_name]
    tensors = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    analytic = sum(rule.state_bytes(group, [p.numel() for p in group["params"]], state_dtype=state_dtype)
                   for group in optimizer.param_groups)
    elementwise = tensor_bytes(t for t in tensors if t.dim() > 0)
    return dict(measured_state_bytes=tensor_bytes(tensors), analytic_state_bytes=analytic,
                param_bytes=tensor_bytes(params),
                measured_states_per_param=elementwise / tensor_bytes(params),
                analytic_states_per_param=len(rule.state_names(optimizer.param_groups[0])))


def train(contender: Contender, lr: float, initial: GPT, batches: torch.Tensor, windows: torch.Tensor, impl: str,
          state_dtype=None, stochastic_rounding: bool = False) -> dict:
    model = copy.deepcopy(initial)  # a deep copy keeps the head tied to the embedding
    optimizer = contender.make(model, lr, impl, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding)
    initial_weights = fingerprint(model)
    losses = []
    for tokens in batches:
        loss = model(tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    with torch.no_grad():
        validation = model(windows).item()
    tail = losses[-max(1, len(losses) // 10):]
    final_train = sum(tail) / len(tail)
    return dict(optimizer=contender.rule, lr=lr, losses=losses, initial_weights=initial_weights,
                final_train_loss=final_train if math.isfinite(final_train) else math.inf,
                validation_loss=validation, **state_memory(contender.rule, optimizer, state_dtype))


def sweep(learning_rates: dict, initial, batches, windows, impl, contenders: dict = CONTENDERS) -> dict:
    """Every (optimizer, lr) trained; name -> its runs, the chosen (lowest final training loss) first."""
    runs = {}
    for name, grid in learning_rates.items():
        trained = [train(contenders[name], lr, initial, batches, windows, impl) for lr in grid]
        runs[name] = sorted(trained, key=lambda run: run["final_train_loss"])
    return runs


def moving_average(values: list, window: int) -> torch.Tensor:
    values = torch.tensor(values, dtype=torch.float64)
    window = min(window, len(values))
    return values.unfold(0, window, 1).mean(dim=1)


def draw(chosen: dict, uniform: float, unigram: float, title: str):
    figure, (loss_axes, memory_axes) = pyplot.subplots(1, 2, figsize=(13, 4.8))
    for run in chosen.values():
        smoothed = moving_average(run["losses"], SMOOTHING)
        line, = loss_axes.plot(range(len(run["losses"]) - len(smoothed) + 1, len(run["losses"]) + 1), smoothed,
                               label=f"{run['optimizer']}, lr {run['lr']:g}: validation {run['validation_loss']:.3f}")
        loss_axes.plot(len(run["losses"]), run["validation_loss"], "o", color=line.get_color())
    loss_axes.axhline(uniform, color="grey", linestyle="--", label=f"uniform, ln V = {uniform:.3f}")
    loss_axes.axhline(unigram, color="grey", linestyle=":", label=f"character frequencies = {unigram:.3f}")
    loss_axes.set(xlabel="step", ylabel=f"training loss (nats/char, mean of {SMOOTHING} steps)", title=title)
    loss_axes.plot([], [], "ok", label="validation loss at the end")
    loss_axes.legend(fontsize=8, loc="upper right")

    names = list(chosen)
    kib = lambda key: [chosen[name][key] / 1024 for name in names]  # noqa: E731
    positions = torch.arange(len(names), dtype=torch.float64)
    memory_axes.bar(positions - 0.2, kib("measured_state_bytes"), width=0.4, label="measured (optimizer.state)")
    memory_axes.bar(positions + 0.2, kib("analytic_state_bytes"), width=0.4, label="analytic (Rule.state_bytes)")
    memory_axes.axhline(chosen[names[0]]["param_bytes"] / 1024, color="grey", linestyle="--", label="the params (fp32)")
    for position, name in zip(positions, names):
        memory_axes.text(position, chosen[name]["measured_state_bytes"] / 1024,
                         f"{chosen[name]['measured_states_per_param']:g} / param", ha="center", va="bottom", fontsize=8)
    memory_axes.set_xticks(positions, names)
    memory_axes.set_ylim(0, 1.15 * max(kib("measured_state_bytes")))  # room for the labels
    memory_axes.set(ylabel="optimizer state (KiB, fp32)", title="optimizer state after training")
    memory_axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def run(out=None, steps: int = 120, batch: int = 16, context: int = 32, width: int = 64, blocks: int = 2,
        heads: int = 2, learning_rates: dict = None, impl: str = "reference", seed: int = 0) -> dict:
    """``learning_rates``: optimizer name -> the lrs to sweep (default each CONTENDERS grid)."""
    learning_rates = learning_rates or {name: contender.learning_rates for name, contender in CONTENDERS.items()}
    unknown = set(learning_rates) - set(CONTENDERS)
    if unknown:
        raise ValueError(f"learning_rates: no optimizer named {sorted(unknown)}; the optimizers are {list(CONTENDERS)}")
    corpus = load_corpus()
    config = GPTConfig(vocab=len(corpus.vocabulary), context=context, width=width, blocks=blocks, heads=heads)
    initial = make_model(config, seed)
    batches = training_batches(corpus.train, steps, batch, context, seed)
    windows = validation_windows(corpus.validation, context)
    with common.one_thread():
        runs = sweep(learning_rates, initial, batches, windows, impl)
    chosen = {name: trained[0] for name, trained in runs.items()}
    uniform, unigram = math.log(len(corpus.vocabulary)), unigram_cross_entropy(corpus, windows)
    results = dict(chosen=chosen, runs=runs, uniform_loss=uniform, unigram_loss=unigram,
                   vocabulary=len(corpus.vocabulary), params=sum(p.numel() for p in initial.parameters()),
                   initial_weights=fingerprint(initial), impl=impl)

    figure = draw(chosen, uniform, unigram, f"{results['params']:,}-param GPT on {CORPUS.name}, {steps} steps of "
                                            f"{batch}×{context} chars, impl={impl}")
    summary = ("optimizer", "lr", "final_train_loss", "validation_loss", "measured_state_bytes",
               "analytic_state_bytes", "measured_states_per_param", "analytic_states_per_param", "initial_weights")
    rows = [dict(kind="run", chosen=trained is runs[name][0], steps=steps, impl=impl,
                 **{key: trained[key] for key in summary})
            for name in runs for trained in runs[name]]
    rows += [dict(kind="training loss", optimizer=name, lr=trained["lr"], step=step + 1, loss=loss)
             for name, trained in chosen.items() for step, loss in enumerate(trained["losses"])]
    common.save(NAME, figure, rows, out)
    print_table(results, steps)
    return results


def print_table(results: dict, steps: int):
    print(f"{results['params']:,} params, vocabulary {results['vocabulary']}: uniform loss ln V = "
          f"{results['uniform_loss']:.3f}, character frequencies {results['unigram_loss']:.3f}; {steps} steps, "
          f"impl={results['impl']}; chosen (*): the lr of each grid with the lowest training loss over the last "
          "tenth of the steps")
    print(f"{'optimizer':9} {'lr':>7} {'train':>8} {'validation':>10} {'state B measured':>16} {'analytic':>9} "
          f"{'states/param':>12}")
    for trained in (run for runs in results["runs"].values() for run in runs):
        mark = "*" if trained is results["chosen"][trained["optimizer"]] else " "
        print(f"{trained['optimizer']:9} {trained['lr']:7g} {trained['final_train_loss']:8.3f} "
              f"{trained['validation_loss']:10.3f} {trained['measured_state_bytes']:16,} "
              f"{trained['analytic_state_bytes']:9,} {trained['measured_states_per_param']:12g} {mark}")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
