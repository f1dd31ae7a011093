"""The one place where a kernel's launch configuration is chosen.

For now a default table; the per-GPU tuner and its committed tables are a separate piece of work.
Under the Triton interpreter nothing is ever benchmarked (there is no device to time): the
interpreter configuration follows the tensor size alone, small enough that test tensors of a few
thousand elements still span several chunks, so the chunk map and the masked tail are exercised.
"""
from dataclasses import dataclass

import torch
import triton


@dataclass(frozen=True)
class LaunchConfig:
    block_size: int  # elements per block, one vector op per element lane
    blocks_per_program: int  # blocks one program walks before it exits: fewer, longer programs
    num_warps: int
    num_stages: int


# Untuned starting points for a memory-bound elementwise kernel: 16 bytes per thread per access
# with 4 warps is 512 fp32 elements; two passes of that per block keep several loads in flight.
# Two-byte dtypes take twice the elements so each access is still 16 bytes wide.
DEFAULT_CONFIGS = {
    4: LaunchConfig(block_size=1024, blocks_per_program=4, num_warps=4, num_stages=1),
    2: LaunchConfig(block_size=2048, blocks_per_program=4, num_warps=4, num_stages=1),
}


def interpreter_config(numel: int) -> LaunchConfig:
    """Under the interpreter each program costs Python time per operation whatever its width, so a
    large tensor takes wide blocks: an Adam step on 327,680 fp32 elements took 6 s in blocks of 1024
    and 0.17 s in blocks of 65536. A tensor spans about four blocks, and tensors up to 4096 elements
    keep blocks of 1024, so tests of a few thousand elements still span several chunks."""
    block_size = min(65536, max(1024, triton.next_power_of_2(numel) // 4))
    return LaunchConfig(block_size=block_size, blocks_per_program=1, num_warps=1, num_stages=1)


def launch_config(rule_name: str, dtype: torch.dtype, numel: int, device: torch.device) -> LaunchConfig:
    """The launch configuration for one rule, storage dtype and largest tensor size on ``device``.

    Kernels meet CPU tensors only under the interpreter, so the device alone tells the two apart."""
    if device.type == "cpu":
        return interpreter_config(numel)
    return DEFAULT_CONFIGS[torch.empty((), dtype=dtype).element_size()]
