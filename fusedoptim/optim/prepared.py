"""What a rule with host-side upkeep of its scalar states (NAdam, ASGD) hands the launch plan, once per plan build."""
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Prepared:
    """Torch ops on the packed scalar-state buffers, a few per plan and step, never one per tensor:
    ``after(amp)`` after the step is counted and the sums are made, before the update (scalars the update
    reads advanced: NAdam's mu_product); ``after_update(amp)`` after the update (scalars the update
    reads as the previous step left them: ASGD's eta and mu). ``amp``: GradScaler's (inverse scale,
    found_inf), or None."""

    after: Optional[Callable[[Optional[tuple]], None]] = None
    after_update: Optional[Callable[[Optional[tuple]], None]] = None
