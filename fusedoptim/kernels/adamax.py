"""Adamax (Kingma & Ba 2015, section 7.1): the fused update.

The equations, and torch's order of operations that this math follows, are in
``optim.reference.adamax``'s docstring.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import bias_correction, coupled_gradient, hyperparameter


@triton.jit
def adamax_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    eps, weight_decay = hyper.eps, hyper.weight_decay
    step = scalars[0]  # already counts this step: 1 on the first
    grad = coupled_gradient(grad, param, weight_decay, FLAGS.MAXIMIZE)
    exp_avg = states[FLAGS.EXP_AVG_INDEX]
    exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)  # torch's lerp_ for weights below 0.5
    # u ← max(β2·u, |g| + eps): eps enters before the max, as in torch; NaN wins, as in torch.maximum
    exp_inf = tl.maximum(beta2 * states[FLAGS.EXP_INF_INDEX], tl.abs(grad) + eps, propagate_nan=tl.PropagateNan.ALL)
    # (clr·m)/u with clr = lr/(1 − β1ᵗ), torch's order (addcdiv): where the product overflows, torch's θ is
    # ±inf or NaN
    param = param - ((lr / bias_correction(beta1, step)) * exp_avg) / exp_inf
    return param, (exp_avg, exp_inf)
