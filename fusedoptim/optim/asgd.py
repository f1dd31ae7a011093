"""ASGD's host side: its scalar states ``eta`` and ``mu`` (torch's names), advanced on the device once
per step for every param of a device, after the update: one small torch op chain on the packed
buffers per device, never one per tensor, and no host sync.

The update reads η and μ as the previous step left them (torch advances them after its update), so
they are advanced after the update launch (``Prepared.after_update``), from the step the optimizer
already counted. A kernel cannot advance them: every program of a tensor reads them, and one that
wrote them would race with the others.
"""
import torch

from fusedoptim.optim.prepared import Prepared
from fusedoptim.optim.reference.asgd import step_size_and_averaging_weight


def asgd_prepare(group, scalar_buffers) -> Prepared:
    """After the update, each device's eta and mu buffers set from
    its steps in fp64 (torch's Python floats), or left as they are on a step GradScaler skips (whose
    count stayed)."""
    buffers = [(etas, scalar_buffers["mu"][device][0], scalar_buffers["step"][device][0])
               for device, (etas, _) in scalar_buffers["eta"].items()]

    def after_update(amp):
        lr, lambd, alpha, t0 = group["lr"], group["lambd"], group["alpha"], group["t0"]  # a scheduler may change them
        for etas, mus, steps in buffers:
            step_lr = lr.to(steps.device, torch.float64) if isinstance(lr, torch.Tensor) else lr  # read on the device
            eta, mu = step_size_and_averaging_weight(step_lr, lambd, alpha, t0, steps.double())
            if amp is not None:
                counted = amp[1].to(steps.device).eq(0)
                eta, mu = torch.where(counted, eta, etas), torch.where(counted, mu, mus)
            etas.copy_(eta)
            mus.copy_(mu)

    return Prepared(after_update=after_update)
