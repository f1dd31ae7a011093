"""AdEMAMix and ADOPT against their peers over 20 steps, in both impls (tests/test_peers.py's machinery):
pytorch-optimizer 4.1.0's AdEMAMix (weight_decouple=True) and ADOPT, and AdEMAMix's authors' PyTorch code
(apple/ml-ademamix, pytorch/ademamix.py) transcribed below, since it differs from pytorch-optimizer's:

- two warm-ups, alpha_warmup and beta3_warmup (pytorch-optimizer's one t_alpha_beta3 sets both);
- β3's schedule through f(β) = ln ½ / ln(β + 1e-8) − 1 (pytorch-optimizer's closed form has no 1e-8, and
  fails at β1 = 0 with a warm-up: ln 0);
- the decay θ ← θ − lr·(u + λθ) (pytorch-optimizer's θ ← θ(1 − lr·λ) first, equal to rounding);
- α's default 2.0 (pytorch-optimizer's 5.0, given to it explicitly here).

ADOPT's authors' code (iShohei220/adopt) counts steps from 0 (docs/ademamix-adopt.md), so ours follows
pytorch-optimizer's, as issue 27 asks; its clip_lambda is t^¼ here (ours has no other).
"""
import math

import pytest
import torch

from tests.test_peers import PLAIN, Case, cases, not_installed, run_and_compare


class AuthorsAdEMAMix(torch.optim.Optimizer):
    """apple/ml-ademamix's pytorch/ademamix.py, its step transcribed, its schedules in fp64 Python floats (at
    β1 = 0 theirs keeps no fast EMA and reads g, which 0·m1 + 1·g here equals)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, beta3_warmup=None,
                 alpha_warmup=None, eps=1e-8, weight_decay=0):
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, beta3_warmup=beta3_warmup,
                                      alpha_warmup=alpha_warmup, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2, beta3_final = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg_fast=torch.zeros_like(p), exp_avg_slow=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, grad = state["step"], p.grad
                alpha, beta3 = group["alpha"], beta3_final
                if group["alpha_warmup"] is not None and t < group["alpha_warmup"]:
                    a = t / float(group["alpha_warmup"])  # linear_warmup_scheduler from 0
                    alpha = (1.0 - a) * 0 + a * group["alpha"]
                if group["beta3_warmup"] is not None and t < group["beta3_warmup"]:
                    def f(beta):  # linear_hl_warmup_scheduler's f, and f_inv below
                        return math.log(0.5) / math.log(beta + 1e-8) - 1
                    a = t / float(group["beta3_warmup"])
                    beta3 = math.pow(0.5, 1 / ((1.0 - a) * f(beta1) + a * f(beta3_final) + 1))
                state["exp_avg_fast"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_slow"].mul_(beta3).add_(grad, alpha=1 - beta3)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                update = (state["exp_avg_fast"].div(1 - beta1**t) + alpha * state["exp_avg_slow"]) / denom
                update.add_(p, alpha=group["weight_decay"])
                p.add_(-group["lr"] * update)


ADEMAMIX_STATES = {"exp_avg_fast": "exp_avg", "exp_avg_slow": "exp_avg_slow", "exp_avg_sq": "exp_avg_sq"}
SAME_STATES = {name: name for name in ADEMAMIX_STATES}
# Warm-ups shorter than the 20 steps: both the ramp and the steps after it run.
WARMED = dict(lr=1e-2, betas=(0.8, 0.99, 0.999), alpha=4.0, eps=1e-6, weight_decay=0.1)

PYTORCH_OPTIMIZER = {
    "AdEMAMix-defaults": Case("AdEMAMix", {}, "AdEMAMix", dict(PLAIN, alpha=2.0, weight_decouple=True),
                              ADEMAMIX_STATES),
    "AdEMAMix-warmup": Case("AdEMAMix", dict(WARMED, alpha_warmup=8, beta3_warmup=8), "AdEMAMix",
                            dict(PLAIN, **WARMED, t_alpha_beta3=8, weight_decouple=True), ADEMAMIX_STATES),
    "ADOPT-defaults": Case("ADOPT", {}, "ADOPT", PLAIN, {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    "ADOPT-l2-maximize": Case("ADOPT", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1, maximize=True),
                              "ADOPT", dict(PLAIN, lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1,
                                            maximize=True), {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    "ADOPT-decoupled": Case("ADOPT", dict(lr=1e-2, weight_decay=0.1, weight_decouple=True), "ADOPT",
                            dict(PLAIN, lr=1e-2, weight_decay=0.1, weight_decouple=True),
                            {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
    "ADOPT-fixed_decay": Case("ADOPT", dict(lr=1e-2, weight_decay=0.01, weight_decouple=True, fixed_decay=True),
                              "ADOPT", dict(PLAIN, lr=1e-2, weight_decay=0.01, weight_decouple=True, fixed_decay=True),
                              {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}),
}

# The authors' own warm-ups, of different lengths (pytorch-optimizer's one T cannot say this).
AUTHORS = {
    "AdEMAMix-authors-warmups": Case("AdEMAMix", dict(WARMED, alpha_warmup=5, beta3_warmup=12), "AdEMAMix",
                                     dict(WARMED, alpha_warmup=5, beta3_warmup=12), SAME_STATES),
    # β1 = 0 with a β3 warm-up: the authors' ln(β1 + 1e-8) is finite (pytorch-optimizer's ln β1 is not).
    "AdEMAMix-authors-beta1-0": Case("AdEMAMix", dict(WARMED, betas=(0.0, 0.99, 0.999), beta3_warmup=10), "AdEMAMix",
                                     dict(WARMED, betas=(0.0, 0.99, 0.999), beta3_warmup=10), SAME_STATES),
}


@pytest.mark.parametrize("case, impl", cases(PYTORCH_OPTIMIZER))
def test_pytorch_optimizer(case, impl):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason=not_installed("pytorch-optimizer==4.1.0"))
    run_and_compare(case, impl, getattr(pytorch_optimizer, case.peer),
                    f"{case.ours} ({impl}) vs pytorch_optimizer.{case.peer}")


@pytest.mark.parametrize("case, impl", cases(AUTHORS))
def test_ademamix_authors_code(case, impl):
    run_and_compare(case, impl, AuthorsAdEMAMix, f"{case.ours} ({impl}) vs apple/ml-ademamix")
