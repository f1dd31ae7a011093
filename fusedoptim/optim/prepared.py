"""What a rule with host-side set-up (Tiger, SGDHD, NAdam, ASGD) hands the launch plan, once per plan build."""
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Prepared:
    """Per tensor, the fp32 scalars its kernels read (tensors whose addresses go into the pointer
    table: fixed for the plan's life, their values written on the device each step) and its row
    length (0, or the length of the rows its last scalar holds one value for). The reduce launch
    writes the last ``outputs`` scalars. ``before`` runs each step before the reduce (clear the
    sums), ``after(amp)`` after it (sum the shards, count events), ``after_update(amp)`` after the
    update (advance scalars the update must read as they were: ASGD's eta and mu): a few torch ops per
    plan, never one per tensor."""

    scalars: list
    row_lengths: list
    outputs: int = 0
    before: Optional[Callable[[], None]] = None
    after: Optional[Callable[[Optional[tuple]], None]] = None
    after_update: Optional[Callable[[Optional[tuple]], None]] = None
