"""Issue 8, item 4: hypergradient descent raises α from 0 and beats fixed-lr gradient descent."""
import pytest
import torch

pytest.importorskip("matplotlib", reason="matplotlib (the scripts extra) is not installed: the reproductions draw with it")

from fusedoptim import optim  # noqa: E402
from fusedoptim.optim.registry import RULES  # noqa: E402
from scripts.reproductions import hypergradient  # noqa: E402
from tests.conftest import assert_close  # noqa: E402


def alpha_by_hand(steps, hypergrad_lr=1e-6) -> float:
    """α after ``steps`` steps from RULES.md's equations in fp64: an oracle independent of optim."""
    curvatures = torch.tensor(hypergradient.CURVATURES, dtype=torch.float64)
    theta = torch.tensor(hypergradient.START, dtype=torch.float64)
    alpha, previous_grad = 0.0, torch.zeros(3, dtype=torch.float64)
    for _ in range(steps):
        grad = curvatures * theta
        alpha += hypergrad_lr * float(grad @ previous_grad)
        theta = theta - alpha * grad
        previous_grad = grad
    return alpha


def test_alpha_rises_to_about_0_0105_and_beats_fixed_lr(tmp_path):
    results = hypergradient.run(out=tmp_path)
    assert (tmp_path / "hypergradient.png").is_file() and (tmp_path / "hypergradient.csv").is_file()

    # The first step has no previous gradient, so α is still 0; the second adds β‖g_1‖² = 0.010101.
    assert results["alpha_after_1"] == 0.0
    assert abs(results["alpha_after_2"] - 1e-6 * (1 + 10**2 + 100**2)) < 1e-8  # fp32 rounding of 0.010101
    # "About 0.0105": the three significant figures, so within half a unit of the last one.
    assert abs(results["alpha_final"] - 0.0105) < 5e-5, results["alpha_final"]
    # The fp32 optimizer against the fp64 equations: α sums 500 products, each rounded at about 1e-7.
    assert abs(results["alpha_final"] - alpha_by_hand(500)) < 1e-4 * results["alpha_final"]
    # α stays below 2/100, where gradient descent on the stiff coordinate would diverge.
    assert results["alpha_max"] < 2 / max(hypergradient.CURVATURES)

    # Beats lr = 1e-3, by far: the slowest coordinate's loss contracts by (1 − α)² a step against
    # 0.999², so after 500 steps the ratio is about exp(−2·500·(0.0105 − 0.001)) ≈ 1e-4; 1e-2 is a wide margin.
    assert results["loss_final_sgdhd"] < 1e-2 * results["loss_final_sgd"], results


def test_fused_kernel_learns_the_same_alpha():
    """The fused path (the dot product reduced on the device) reproduces the reference's α and θ over
    the stretch where α jumps and settles."""
    steps = 30  # about 40 ms a step under the Triton interpreter
    runs = {impl: hypergradient.descend(optim.SGDHD, steps, impl=impl, lr=0.0, hypergrad_lr=1e-6)
            for impl in ("triton", "reference")}
    tolerance = RULES["SGDHD"].tolerances[torch.float32]
    assert_close(torch.tensor(runs["triton"]["lrs"]), torch.tensor(runs["reference"]["lrs"]), tolerance, "α")
    assert_close(runs["triton"]["theta"], runs["reference"]["theta"], tolerance, "θ")
    assert runs["triton"]["lrs"][-1] > 0.0103  # the claim itself, on the kernel: α has risen past 1/100
