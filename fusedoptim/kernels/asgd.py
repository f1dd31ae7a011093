"""ASGD (Polyak & Juditsky 1992): the fused update, in torch.optim.ASGD's order.

The equations are in ``optim.reference.asgd``'s docstring. The step size η and the averaging weight μ
are scalar states its row advances on the device after this launch
(``optim.reference.asgd.advance_eta_and_mu``, a ScalarUpdate): the
kernel reads them as the previous step left them, as torch's update does.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import coupled_gradient


@triton.jit
def asgd_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    eta = scalars[1]  # η_{t−1} (scalars: step, eta, mu): lr before the first step
    mu = scalars[2]  # μ_{t−1}: 1 until the step after t0
    grad = coupled_gradient(grad, param, hyper.weight_decay, FLAGS.MAXIMIZE)
    param = param * (1.0 - hyper.lambd * eta)  # the decay term
    param = param - eta * grad
    ax = states[FLAGS.AX_INDEX]
    # θ̄ ← θ̄ + μ·(θ − θ̄), or θ itself at μ = 1 (torch copies it: θ̄ + (θ − θ̄) may round off θ)
    ax = tl.where(mu != 1.0, ax + (param - ax) * mu, param)
    return param, (ax,)
