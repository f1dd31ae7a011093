"""scripts/muon_gpu.py, the `./dev gpu` stage that times fo.Muon against torch.optim.Muon on a GPU: its
code runs here on the CPU (the interpreter, tiny matrices, a plain clock), so that a lent GPU's minutes
are not spent finding a bug in it; without a GPU its command measures nothing and says so."""
import pytest
import torch

from scripts import muon_gpu
from tests.conftest import DEVICE


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the GPU runs the stage itself")
def test_each_measurement_has_ours_and_torchs_row_and_the_ratio_between_them():
    """bf16 params: the step also timed with 24-bit split masters, against the same torch step."""
    rows = muon_gpu.measure(DEVICE, [(16, 48), (48, 16)], [32], (torch.bfloat16,), muon_gpu.clock)
    pairs = {(r["measurement"], r["implementation"]) for r in rows}
    assert pairs == {("step", "ours (triton)"), ("step", "ours (triton), 24-bit masters"), ("step", "torch.optim.Muon"),
                     ("newton_schulz", "ours (triton)"), ("newton_schulz", "torch matmuls")}
    for measurement in ("step", "newton_schulz"):
        *ours, torchs = [r for r in rows if r["measurement"] == measurement]  # ours measured first
        for row in ours:
            assert row["ratio_to_torch"] == pytest.approx(row["median_ms"] / torchs["median_ms"])
        assert torchs["ratio_to_torch"] == 1.0

@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU measures")
def test_without_a_gpu_it_measures_nothing(capsys, tmp_path):
    assert muon_gpu.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out and not list(tmp_path.iterdir())
