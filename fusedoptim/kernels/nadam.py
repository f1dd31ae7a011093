"""NAdam (Dozat 2016): the fused update, in torch.optim.NAdam's order.

The equations are in ``optim.reference.nadam``'s docstring. The running product of the momentum
coefficients, μ_1···μ_t, is a scalar state its row advances on the device
(``optim.reference.nadam.advance_mu_product``, a ScalarUpdate)
before this launch: the kernel reads it already multiplied by this step's μ_t, as it reads the step
already counted.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import adam_moments, bias_correction, hyperparameter


@triton.jit
def momentum_coefficient(beta1, momentum_decay, step):
    """μ_t = β1·(1 − ½·0.96^(t·ψ)), Dozat's momentum schedule, as exp2 in fp32 from the device step."""
    return beta1 * (1.0 - 0.5 * tl.exp2((step * momentum_decay) * -0.058893689053568565))  # log2(0.96)


@triton.jit
def nadam_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta1, beta2 = hyperparameter(hyper.lr), hyperparameter(hyper.beta1), hyperparameter(hyper.beta2)
    eps, weight_decay, momentum_decay = hyper.eps, hyper.weight_decay, hyper.momentum_decay
    step = scalars[0]  # already counts this step: 1 on the first
    mu_product = scalars[1]  # μ_1···μ_t: already multiplied by this step's μ_t
    param, grad, exp_avg, exp_avg_sq = adam_moments(param, grad, states[FLAGS.EXP_AVG_INDEX],
                                                    states[FLAGS.EXP_AVG_SQ_INDEX], lr, beta1, beta2, weight_decay, FLAGS)
    mu = momentum_coefficient(beta1, momentum_decay, step)
    mu_next = momentum_coefficient(beta1, momentum_decay, step + 1.0)
    denom = tl.sqrt(exp_avg_sq / bias_correction(beta2, step)) + eps  # v̂ divided before the root, as torch
    # Two addcdiv_ in torch's order, (coefficient·x)/denom each: the gradient's share, then the momentum's
    grad_coefficient = -lr * (1.0 - mu) / (1.0 - mu_product)
    param = param + (grad_coefficient * grad) / denom
    exp_avg_coefficient = (-lr * mu_next) / (1.0 - mu_product * mu_next)
    param = param + (exp_avg_coefficient * exp_avg) / denom
    return param, (exp_avg, exp_avg_sq)
