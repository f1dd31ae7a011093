"""What a launch can be configured with: the knobs, their defaults, and the space the tuner searches.

Both kernels of the shared launcher (``multi_tensor_update_kernel`` and ``multi_tensor_reduce_kernel``,
fusedoptim/kernels/multi_tensor.py) take the same knobs, and a rule's launches share its configuration: each rule is
tuned on its own, since its math sets the registers per element and the bytes moved per element.
"""
import itertools
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LaunchConfig:
    block_size: int  # elements per block, one vector op per element lane (BLOCK_SIZE)
    blocks_per_program: int  # blocks one program walks before it exits: fewer, longer programs
    num_warps: int
    num_stages: int  # software pipelining of the loop over a program's blocks

    def as_dict(self) -> dict:
        return asdict(self)


# Untuned starting points for a memory-bound elementwise kernel: 16 bytes per thread per access
# with 4 warps is 512 fp32 elements; two passes of that per block keep several loads in flight.
# Two-byte dtypes take twice the elements so each access is still 16 bytes wide.
DEFAULT_CONFIGS = {
    4: LaunchConfig(block_size=1024, blocks_per_program=4, num_warps=4, num_stages=1),
    2: LaunchConfig(block_size=2048, blocks_per_program=4, num_warps=4, num_stages=1),
}

# The search space, in elements of 16 bytes per thread-access: a block is 1 to 8 such accesses per
# thread of 4 warps; a program walks 1 to 8 blocks (more programs hide latency, fewer cost less
# scheduling); 2 to 8 warps; the loop pipelined or not. 4 × 3 × 3 × 2 = 72 candidates per rule × dtype
# × bucket, each one compilation: `python -m fusedoptim.tuner --help` says how to narrow a run.
ACCESSES_PER_THREAD = (1, 2, 4, 8)
BLOCKS_PER_PROGRAM = (1, 4, 8)
NUM_WARPS = (2, 4, 8)
NUM_STAGES = (1, 2)


def search_space(dtype: torch.dtype) -> list[LaunchConfig]:
    """Every candidate for ``dtype``, the default among them."""
    elements_per_access = 16 // dtype.itemsize
    candidates = [LaunchConfig(accesses * elements_per_access * 32 * 4, blocks, warps, stages)
                  for accesses, blocks, warps, stages in
                  itertools.product(ACCESSES_PER_THREAD, BLOCKS_PER_PROGRAM, NUM_WARPS, NUM_STAGES)]
    default = DEFAULT_CONFIGS[dtype.itemsize]
    return candidates if default in candidates else [default, *candidates]
