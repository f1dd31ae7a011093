"""Issue 26, item 6: Muon (AdamW on the non-matrix params) against AdamW alone on tiny_transformer's GPT
(scripts/reproductions/muon_gpt.py): the claim as measured at the script's 400 steps."""
import pytest

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from scripts.reproductions import muon_gpt, tiny_transformer  # noqa: E402
from tests.conftest import run_reproduction  # noqa: E402

STEPS = 400  # the script's own run length, so that the claim is tested where the figure shows it
# One lr each instead of the script's three: the ones its sweep chooses at this length (AdamW 3e-3, then
# Muon 1e-2 beside AdamW at 3e-3). The sweep's protocol is tested apart, on a few steps.
ADAMW_LR, MUON_LR = 3e-3, 1e-2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_reproduction(muon_gpt, tmp_path_factory, steps=STEPS, adamw_grid=(ADAMW_LR,), muon_grid=(MUON_LR,))


def test_writes_its_figure_and_numbers(results):
    assert (results["out"] / "muon_gpt.png").stat().st_size > 0
    csv = (results["out"] / "muon_gpt.csv").read_text()
    # a header, one row per run, its validation points (every 20 steps), each chosen run's training losses,
    # the impl comparison
    rows = 1 + 2 + 2 * STEPS // muon_gpt.VALIDATION_EVERY + 2 * STEPS + 1
    assert csv.count("\n") == rows
    assert ",triton vs reference," in csv


def test_muon_steps_the_blocks_matrices_and_adamw_the_rest(results):
    # 2 blocks × (q,k,v 192×64, attention output 64×64, MLP 256×64 and 64×256): 8 matrices, 49,152 params
    # each block; AdamW: the tied token embedding, the position embedding, 5 LayerNorms' weights and
    # biases, 8 linear biases.
    assert (results["muon_tensors"], results["muon_params"]) == (8, 98_304)
    assert results["adamw_tensors"] == 20
    corpus = tiny_transformer.load_corpus()
    model = tiny_transformer.make_model(tiny_transformer.GPTConfig(len(corpus.vocabulary), 32, 64, 2, 2), 0)
    matrices, others = muon_gpt.split_params(model)
    others = {id(p) for p in others}
    assert all(p.ndim == 2 for p in matrices) and id(model.wte.weight) in others and id(model.wpe.weight) in others
    assert len(matrices) + len(others) == len(list(model.parameters()))


def test_every_run_starts_from_the_same_weights(results):
    fingerprints = {run["initial_weights"] for runs in results["runs"].values() for run in runs}
    assert fingerprints == {results["initial_weights"]}


def test_muon_reaches_a_lower_validation_loss_than_adamw(results):
    adamw, muon = results["chosen"]["AdamW"]["validation_loss"], results["chosen"]["Muon + AdamW"]["validation_loss"]
    # Measured 2.207 against 2.470: 0.26 nats, more than the 0.08 between AdamW's two best lrs. 0.15
    # leaves room for another machine's rounding and still says Muon wins by far.
    assert muon < adamw - 0.15, (muon, adamw)
    # Both learn the context: below the character frequencies' 3.409 by more than a nat.
    assert max(muon, adamw) < results["unigram_loss"] - 0.9


def test_muon_reaches_adamws_final_loss_in_about_half_the_steps(results):
    # Measured: step 200 of 400 (validated every 20 steps). Moonlight's "about 2× compute efficiency",
    # at this size: at most 60 % of the steps.
    assert results["muon_steps_to_adamw_loss"] <= 0.6 * STEPS, results["muon_steps_to_adamw_loss"]


def test_triton_steps_as_the_reference(results):
    impls = results["impls"]
    if impls is None:
        pytest.skip("the kernels cannot run here: no GPU and no TRITON_INTERPRET=1")
    # Same gradients, 3 steps: Muon within γ'·2⁻⁶ a step (measured 1.3e-4 against 9.4e-4), AdamW within its
    # fp32 tolerance a step (measured 2.4e-7 against 3.3e-5).
    assert impls["muon_difference"] <= impls["muon_bound"], impls
    assert impls["adamw_difference"] <= impls["adamw_bound"], impls


def test_the_sweep_gives_muons_adamw_the_lr_adamw_chose(tmp_path):
    numbers = muon_gpt.run(out=tmp_path, steps=20, adamw_grid=(1e-2, 1e-3), muon_grid=(1e-2,), check_steps=0)
    chosen = numbers["chosen"]["AdamW"]["lr"]
    assert chosen == min(numbers["runs"]["AdamW"], key=lambda run: run["final_train_loss"])["lr"]
    assert numbers["chosen"]["Muon + AdamW"]["adamw_lr"] == chosen
