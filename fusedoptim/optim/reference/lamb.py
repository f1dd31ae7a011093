import torch

from fusedoptim.optim.reference import upcast


def lamb(params, grads, states, group):
    r"""LAMB, layer-wise adaptive moments (You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer
    & Hsieh, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020,
    arXiv:1904.00962, Algorithm 2 with φ the identity). With g ← −g if maximize, t the step, λ = weight_decay:

    .. math::
        m ← β_1 m + (1 − β_1) g, \qquad v ← β_2 v + (1 − β_2) g^2, \qquad
        r = \frac{m / (1 − β_1^t)}{\sqrt{v / (1 − β_2^t)} + ε}, \qquad u = r + λθ,
        θ ← θ − η \frac{‖θ‖}{‖u‖} u,

    per tensor, the trust ratio ‖θ‖/‖u‖ taken as 1 where either norm is 0; ‖θ‖ of θ before the step, ‖u‖
    of this step's u (from the new m and v). pytorch_optimizer.Lamb (4.1.0) differs by default: it decays
    θ ← θ(1 − ηλ) outside the trust ratio (weight_decouple=True), steps by η/(1 − β_1^t) (adam_debias=False),
    keeps no bias correction of v, caps ‖θ‖ at 10 (its class attribute clamp) and adds ε to ‖u‖.
    State per param: step (an fp32 scalar tensor), exp_avg (m) and exp_avg_sq (v).
    """
    lr, (beta1, beta2), eps, weight_decay = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
    beta1, beta2 = float(beta1), float(beta2)
    for param, grad, state in zip(params, grads, states):
        t = state["step"].item()  # the optimizer counted this step already
        theta, g = upcast(param), upcast(grad)
        g = -g if group["maximize"] else g
        m = beta1 * upcast(state["exp_avg"]) + (1 - beta1) * g  # m ← β1·m + (1 − β1)·g
        v = beta2 * upcast(state["exp_avg_sq"]) + (1 - beta2) * g * g  # v ← β2·v + (1 − β2)·g²
        r = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)  # r = m̂/(√v̂ + ε)
        u = r + weight_decay * theta if weight_decay != 0 else r  # u = r + λθ
        theta_norm, u_norm = torch.linalg.vector_norm(theta), torch.linalg.vector_norm(u)
        trust = theta_norm / u_norm if theta_norm > 0 and u_norm > 0 else 1.0  # ‖θ‖/‖u‖, or 1
        param.copy_(theta - lr * trust * u)  # θ ← θ − η·trust·u
        state["exp_avg"].copy_(m)
        state["exp_avg_sq"].copy_(v)
