r"""Muon (with AdamW for the non-matrix params) against AdamW alone on tiny_transformer's character GPT.

Issue 26, item 6. Muon (Jordan et al. 2024; torch.optim.Muon since 2.9) orthogonalizes the momentum
of a weight matrix by Newton–Schulz iterations (docs/muon.md has its equations); Liu et al. 2025
(Moonlight) report about twice AdamW's compute efficiency. Muon is defined for 2-D weights only:
its authors, and torch's documentation, hand the embeddings, the head, the norms and the biases to
AdamW. So do the runs here: fo.Muon steps the four 2-D weights of each transformer block (the fused
q, k, v projection, 192 × 64, as one matrix; the attention's output, 64 × 64; the MLP's 256 × 64 and
64 × 256), 8 tensors, 98,304 of the 108,288 params; fo.AdamW steps the rest (the token embedding,
tied to the head, the position embedding, every LayerNorm and bias).

The set-up is tiny_transformer's (its corpus, GPT, initial weights and batch sequence, made by its
functions), run for 400 steps instead of 120, as state_precision does: at 120 steps both are still
in the loss's first plunge. Decays are AdamW's 0.01 for both optimizers (Muon's torch default, 0.1, is
for long runs; the comparison is of the update rules, not of their regularisation). Muon keeps
torch's defaults otherwise: momentum 0.95, Nesterov, 5 Newton–Schulz steps, adjust_lr_fn None, so a
matrix of r rows and c columns moves by lr·√max(1, r/c) per element.

The lrs, each judged as tiny_transformer judges them (by the mean training loss over the last tenth
of the steps; the validation loss reported is not what chose them): AdamW alone from (1e-3, 3e-3,
1e-2); then Muon's from (3e-3, 1e-2, 3e-2), its AdamW taking the lr that AdamW alone chose, so that
the non-matrix params are stepped as in the baseline and only the matrices' rule changes. The grids
are centred where sweeps made while writing this found each optimum (400 steps: AdamW 1e-3 to 1e-2,
Muon 3e-3 to 0.1 with its AdamW at 1e-3 or 3e-3).

The steps run the reference update (torch's ops): under the CPU's Triton interpreter a fused step is
about a hundred times slower. ``compare_impls`` checks, on a few steps from the same weights and
batches, that impl="triton" gives the same params within the kernels' tolerances (docs/muon.md),
whenever the kernels can run (a GPU, or TRITON_INTERPRET=1 as ./dev sets it).
"""
import copy
import math
import sys
from typing import NamedTuple

import torch
from matplotlib import pyplot

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from scripts.gpt import GPTConfig
from scripts.reproductions import common, tiny_transformer

NAME = "muon_gpt"
CLAIM = ("On a tiny character-level GPT, Muon on the blocks' weight matrices (AdamW on the rest) reaches a lower "
         "validation loss than AdamW alone in the same steps")

ADAMW_LEARNING_RATES = (1e-3, 3e-3, 1e-2)
MUON_LEARNING_RATES = (3e-3, 1e-2, 3e-2)
WEIGHT_DECAY = 0.01
VALIDATION_EVERY = 20  # steps between two points of the validation curves
# Muon's Newton–Schulz output O differs from the reference's by up to a few bf16 steps (docs/muon.md):
# the tests allow 2⁻⁶ on O, so γ'·2⁻⁶ per step on θ.
MUON_OUTPUT_TOLERANCE = 2 ** -6


class Method(NamedTuple):
    name: str
    muon: bool  # the blocks' matrices to fo.Muon, the rest to fo.AdamW; else everything to fo.AdamW


ADAMW = Method("AdamW", muon=False)
MUON = Method("Muon + AdamW", muon=True)


def split_params(model) -> tuple:
    """(the 2-D weights of the transformer blocks, every other param): Muon's and AdamW's."""
    matrices = [param for name, param in model.named_parameters() if name.startswith("h.") and param.ndim == 2]
    taken = {id(param) for param in matrices}
    return matrices, [param for param in model.parameters() if id(param) not in taken]


def make_optimizers(method: Method, model, lr: float, adamw_lr: float, impl: str) -> list:
    """``lr``: Muon's for the matrices when ``method.muon``, else AdamW's for every param; ``adamw_lr``:
    AdamW's for the non-matrix params beside Muon."""
    if not method.muon:
        return [optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, impl=impl)]
    matrices, others = split_params(model)
    return [optim.Muon(matrices, lr=lr, weight_decay=WEIGHT_DECAY, impl=impl),
            optim.AdamW(others, lr=adamw_lr, weight_decay=WEIGHT_DECAY, impl=impl)]


def train(method: Method, lr: float, adamw_lr: float, initial, batches, windows, impl: str = "reference",
          every: int = VALIDATION_EVERY) -> dict:
    model = copy.deepcopy(initial)  # a deep copy keeps the head tied to the embedding
    optimizers = make_optimizers(method, model, lr, adamw_lr, impl)
    initial_weights = tiny_transformer.fingerprint(model)
    losses, validation = [], []
    for step, tokens in enumerate(batches, start=1):
        loss = model(tokens)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % every == 0 or step == len(batches):
            with torch.no_grad():
                validation.append((step, model(windows).item()))
    tail = losses[-max(1, len(losses) // 10):]
    final_train = sum(tail) / len(tail)
    return dict(method=method.name, lr=lr, adamw_lr=adamw_lr if method.muon else lr, losses=losses,
                validation=validation, validation_loss=validation[-1][1], initial_weights=initial_weights,
                final_train_loss=final_train if math.isfinite(final_train) else math.inf)


def sweep(initial, batches, windows, adamw_grid=ADAMW_LEARNING_RATES, muon_grid=MUON_LEARNING_RATES) -> dict:
    """AdamW alone over its grid, then Muon over its grid beside AdamW at the lr AdamW chose; each
    method's runs, the chosen (lowest final training loss) first."""
    adamw = sorted((train(ADAMW, lr, lr, initial, batches, windows) for lr in adamw_grid),
                   key=lambda run: run["final_train_loss"])
    adamw_lr = adamw[0]["lr"]
    muon = sorted((train(MUON, lr, adamw_lr, initial, batches, windows) for lr in muon_grid),
                  key=lambda run: run["final_train_loss"])
    return {ADAMW.name: adamw, MUON.name: muon}


def steps_to_reach(run: dict, target: float):
    """The first validated step at which ``run``'s validation loss is at most ``target`` (None: never)."""
    return next((step for step, loss in run["validation"] if loss <= target), None)


def compare_impls(initial, batches, lr: float, adamw_lr: float, steps: int = 3) -> dict:
    """Muon + AdamW with impl="triton" and with impl="reference", each stepping its own copy of
    ``initial`` with the same gradients (the reference model's on each batch, copied to the other, so
    that only the optimizers' arithmetic differs) for ``steps`` steps: the largest |Δθ| over Muon's
    matrices and over AdamW's params, beside their bounds. Muon's: Σ_t γ'·2⁻⁶ (γ' = lr·√max(1, r/c), the
    largest of the matrices), the drift of O that the kernels' bf16 products allow; AdamW's: its
    registry tolerance for fp32 per step. None when the kernels cannot run here (no GPU, no
    TRITON_INTERPRET=1)."""
    matrices, _ = split_params(initial)
    if optim.Muon(matrices, impl="auto").chosen_impl() != "triton":
        return None
    models = {impl: copy.deepcopy(initial) for impl in ("triton", "reference")}
    optimizers = {impl: make_optimizers(MUON, model, lr, adamw_lr, impl) for impl, model in models.items()}
    for tokens in batches[:steps]:
        models["reference"](tokens).backward()
        for source, target in zip(models["reference"].parameters(), models["triton"].parameters()):
            target.grad = source.grad.clone()
        for impl in models:
            for optimizer in optimizers[impl]:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    (triton_matrices, triton_others), (reference_matrices, reference_others) = (
        split_params(models[impl]) for impl in ("triton", "reference"))

    def largest(first, second):
        return max((a - b).abs().max().item() for a, b in zip(first, second))

    adjusted_lr = lr * max(math.sqrt(max(1.0, rows / columns)) for rows, columns in (m.shape for m in matrices))
    adamw_tolerance = RULES["AdamW"].tolerances[torch.float32]
    return dict(steps=steps, muon_difference=largest(triton_matrices, reference_matrices),
                muon_bound=steps * adjusted_lr * MUON_OUTPUT_TOLERANCE,
                adamw_difference=largest(triton_others, reference_others),
                adamw_bound=steps * (adamw_tolerance.atol + adamw_tolerance.rtol))


def draw(runs: dict, unigram: float, title: str):
    figure, (train_axes, validation_axes) = pyplot.subplots(1, 2, figsize=(13, 4.8))
    for name, trained in runs.items():
        chosen = trained[0]
        smoothed = tiny_transformer.moving_average(chosen["losses"], tiny_transformer.SMOOTHING)
        lrs = f"Muon lr {chosen['lr']:g}, AdamW lr {chosen['adamw_lr']:g}" if name == MUON.name else f"lr {chosen['lr']:g}"
        line, = train_axes.plot(range(len(chosen["losses"]) - len(smoothed) + 1, len(chosen["losses"]) + 1), smoothed,
                                label=f"{name}, {lrs}")
        for other in trained:
            steps, losses = zip(*other["validation"])
            chosen_run = other is chosen
            label = (f"{name}, {lrs}: {chosen['validation_loss']:.3f}" if chosen_run
                     else f"{name}, lr {other['lr']:g}: {other['validation_loss']:.3f}")
            validation_axes.plot(steps, losses, color=line.get_color(), lw=1.6 if chosen_run else 0.8,
                                 linestyle="-" if chosen_run else ":", label=label)
    for axes in (train_axes, validation_axes):
        axes.axhline(unigram, color="grey", linestyle="--", lw=0.8, label=f"character frequencies = {unigram:.3f}")
        axes.set_xlabel("step")
        axes.grid(True, alpha=0.3)
    train_axes.set(ylabel=f"training loss (nats/char, mean of {tiny_transformer.SMOOTHING} steps)", title=title)
    validation_axes.set(ylabel="validation loss (nats/char)", ylim=(2.0, 3.6),
                        title=f"validation loss every {VALIDATION_EVERY} steps (dotted: the lrs not chosen)")
    train_axes.legend(fontsize=8, loc="upper right")
    validation_axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def run(out=None, steps: int = 400, batch: int = 16, context: int = 32, width: int = 64, blocks: int = 2,
        heads: int = 2, adamw_grid=ADAMW_LEARNING_RATES, muon_grid=MUON_LEARNING_RATES, seed: int = 0,
        check_steps: int = 3) -> dict:
    """``check_steps``: steps of the impl comparison (0: none)."""
    corpus = tiny_transformer.load_corpus()
    config = GPTConfig(vocab=len(corpus.vocabulary), context=context, width=width, blocks=blocks, heads=heads)
    initial = tiny_transformer.make_model(config, seed)
    batches = tiny_transformer.training_batches(corpus.train, steps, batch, context, seed)
    windows = tiny_transformer.validation_windows(corpus.validation, context)
    with common.one_thread():
        runs = sweep(initial, batches, windows, adamw_grid, muon_grid)
        adamw, muon = runs[ADAMW.name][0], runs[MUON.name][0]
        impls = compare_impls(initial, batches, muon["lr"], muon["adamw_lr"], check_steps) if check_steps else None
    matrices, others = split_params(initial)
    unigram = tiny_transformer.unigram_cross_entropy(corpus, windows)
    results = dict(runs=runs, chosen={name: trained[0] for name, trained in runs.items()}, unigram_loss=unigram,
                   params=sum(p.numel() for p in initial.parameters()), muon_tensors=len(matrices),
                   muon_params=sum(p.numel() for p in matrices), adamw_tensors=len(others),
                   initial_weights=tiny_transformer.fingerprint(initial), steps=steps,
                   muon_steps_to_adamw_loss=steps_to_reach(muon, adamw["validation_loss"]), impls=impls)

    figure = draw(runs, unigram, f"{results['params']:,}-param GPT, {steps} steps of {batch}×{context} chars "
                                 f"(Muon: {results['muon_params']:,} params in {len(matrices)} matrices)")
    rows = [dict(kind="run", method=trained["method"], lr=trained["lr"], adamw_lr=trained["adamw_lr"],
                 chosen=trained is runs[name][0], steps=steps, final_train_loss=trained["final_train_loss"],
                 validation_loss=trained["validation_loss"], initial_weights=trained["initial_weights"])
            for name in runs for trained in runs[name]]
    rows += [dict(kind="validation loss", method=trained["method"], lr=trained["lr"], adamw_lr=trained["adamw_lr"],
                  step=step, loss=loss)
             for name in runs for trained in runs[name] for step, loss in trained["validation"]]
    rows += [dict(kind="training loss", method=name, lr=trained[0]["lr"], adamw_lr=trained[0]["adamw_lr"],
                  step=step + 1, loss=loss)
             for name, trained in runs.items() for step, loss in enumerate(trained[0]["losses"])]
    if impls:
        rows.append(dict(kind="triton vs reference", **impls))
    common.save(NAME, figure, rows, out)
    print_table(results)
    return results


def print_table(results: dict):
    print(f"{results['params']:,} params; Muon steps {results['muon_params']:,} of them in {results['muon_tensors']} "
          f"matrices, AdamW the other {results['adamw_tensors']} tensors; {results['steps']} steps; character "
          f"frequencies {results['unigram_loss']:.3f}; chosen (*): the lowest training loss over the last tenth")
    print(f"{'method':14} {'lr':>7} {'AdamW lr':>9} {'train':>7} {'validation':>10}")
    for trained in (run for runs in results["runs"].values() for run in runs):
        mark = "*" if trained is results["chosen"][trained["method"]] else " "
        print(f"{trained['method']:14} {trained['lr']:7g} {trained['adamw_lr']:9g} {trained['final_train_loss']:7.3f} "
              f"{trained['validation_loss']:10.3f} {mark}")
    print(f"Muon + AdamW reaches AdamW's final validation loss at step {results['muon_steps_to_adamw_loss']} "
          f"(validated every {VALIDATION_EVERY} steps)")
    impls = results["impls"]
    if impls is None:
        print("impl='triton' not compared: the kernels cannot run here (no GPU, no TRITON_INTERPRET=1)")
    else:
        print(f"impl='triton' against 'reference' over {impls['steps']} steps: max |Δθ| Muon "
              f"{impls['muon_difference']:.1e} (bound {impls['muon_bound']:.1e}), AdamW {impls['adamw_difference']:.1e} "
              f"(bound {impls['adamw_bound']:.1e})")


if __name__ == "__main__":
    common.main(sys.modules[__name__])
