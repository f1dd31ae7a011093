"""The shared launcher: one launch per (device, dtypes, alignment), any size, any alignment."""
import pytest
import torch

from fusedoptim import optim
from fusedoptim.kernels import launcher
from fusedoptim.optim.registry import RULES
from tests.conftest import DEVICE, assert_close, make_params, random_grads


class CountingKernel:
    """Stands in for the kernel object and counts `kernel[grid](...)` launches."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if rule.has_kernel], ids=lambda rule: rule.name)
def test_one_launch_per_dtype_group(rule, monkeypatch):
    counting = CountingKernel(launcher.multi_tensor_update_kernel)
    monkeypatch.setattr(launcher, "multi_tensor_update_kernel", counting)
    params = make_params([(5,), (1030,), (2, 3, 4), (0,)], torch.float32, rule=rule) + make_params(
        [(7,), (9, 9)], torch.bfloat16, rule=rule)
    optimizer = getattr(optim, rule.name)(params, impl="triton")
    for param, grad in zip(params, random_grads(params, seed=0)):
        param.grad = grad
    optimizer.step()
    assert len(counting.grids) == 2, f"{len(counting.grids)} launches for two dtype groups"
    # fp32: 5, 1030 (two 1024-element chunks under the interpreter) and 24 elements; the empty one gets
    # no program. bf16: one chunk each.
    if DEVICE.type == "cpu":
        assert sorted(grid[0] for grid in counting.grids) == [2, 4]


@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if rule.has_kernel], ids=lambda rule: rule.name)
def test_misaligned_views_are_updated_correctly(rule):
    """Params that are views at odd offsets into one buffer (not 16-byte aligned) take the unaligned
    launch and still match the reference."""
    runs = []
    for impl in ("triton", "reference"):
        buffer = make_params([(3 + 1000 + 2000,)], torch.float32, rule=rule)[0]
        params = [buffer[3:1003].view(40, 25), buffer[1003:]]
        optimizer = getattr(optim, rule.name)(params, impl=impl)
        for step in range(3):
            for param, grad in zip(params, random_grads(params, seed=step)):
                param.grad = grad
            optimizer.step()
        runs.append(buffer)
    assert_close(runs[0], runs[1], rule.tolerances[torch.float32], f"{rule.name} on misaligned views",
                 allowed_mismatches=int(rule.sign_flip_fraction * runs[0].numel()))


def test_chunk_map_covers_every_element_once():
    numels = (1, 1024, 1025, 0, 5000)
    chunk_tensor, chunk_index = launcher.chunk_map(numels, 1024, torch.device("cpu"))
    covered = {}
    for tensor, chunk in zip(chunk_tensor.tolist(), chunk_index.tolist()):
        covered.setdefault(tensor, []).append(chunk)
    assert covered == {0: [0], 1: [0], 2: [0, 1], 4: [0, 1, 2, 3, 4]}
