"""NAdam's host side: its scalar state ``mu_product`` (μ_1···μ_t, torch's name), advanced on the device
once per step for every param of a device, as the step is counted (``optim.plan.count_step``): one
small torch op chain on the packed buffer per device, never one per tensor, and no host sync.

A kernel cannot advance it: every program of a tensor reads it, and one that wrote it would race with
the others. So the update launch reads it already advanced, as it reads the step already counted.
"""
import torch

from fusedoptim.optim.prepared import Prepared
from fusedoptim.optim.reference.nadam import momentum_coefficient


def nadam_prepare(group, scalar_buffers) -> Prepared:
    """Before the update, each device's mu_product buffer
    times μ_t of its (already counted) steps, or times 1 on a step GradScaler skips (whose count
    stayed). μ_t is fp32 on the device, as torch rounds it to multiply its fp32 mu_product."""
    buffers = [(mu_products, scalar_buffers["step"][device][0])
               for device, (mu_products, _) in scalar_buffers["mu_product"].items()]

    def after(amp):
        beta1, momentum_decay = group["betas"][0], group["momentum_decay"]  # read each step: a scheduler may change them
        for mu_products, steps in buffers:
            mu = momentum_coefficient(beta1, momentum_decay, steps)
            if amp is not None:
                mu = torch.where(amp[1].to(steps.device).eq(0), mu, 1.0)
            mu_products.mul_(mu)

    return Prepared(after=after)
