"""Scalar states advanced each step by torch ops (``Rule.scalar_updates``, each an ``optim.rule.ScalarUpdate``):
NAdam's mu_product, ASGD's eta and mu. A kernel cannot advance them: every program of a tensor reads
them, and one that wrote them would race with the others. So they are advanced on their packed
buffers (``optim.states.pack_scalar_states``: one per device), from the step the optimizer already
counted: one op chain per device and step, never one op per tensor, and no host sync.
"""
from typing import Optional

import torch


def advance(rule, group: dict, scalar_buffers: dict, after_update: bool, amp: Optional[tuple]) -> None:
    """The rule's scalar updates of this phase (before the update, or ``after_update``) on every device's
    buffers; on a step GradScaler skips (found_inf ≠ 0, its count not advanced) they keep their values."""
    for spec in rule.scalar_updates:
        if spec.after_update != after_update:
            continue
        for device, (steps, _) in scalar_buffers["step"].items():
            current = [scalar_buffers[name][device][0] for name in spec.names]
            values = spec.function(group, steps, *current)
            if amp is not None:
                counted = amp[1].to(device).eq(0)
                values = [torch.where(counted, value, old) for value, old in zip(values, current)]
            for buffer, value in zip(current, values):
                buffer.copy_(value)
