"""The registry: one row per update rule. Classes, tests, benchmarks and the tuner iterate it.

Adding a rule is its math (fusedoptim/kernels/<rule>.py), its oracle (fusedoptim/optim/reference/<rule>.py) and one row
here, which declares its hyperparameters (optim.hyperparameters) and states (what a row holds and what
follows from it: optim.rule); fusedoptim/optim/__init__.py exports every row's class by itself.
"""
import torch

from fusedoptim.kernels.adadelta import adadelta_update
from fusedoptim.kernels.ademamix import ademamix_agreement, ademamix_update
from fusedoptim.kernels.adagrad import adagrad_update
from fusedoptim.kernels.adam import adam_agreement, adam_update
from fusedoptim.kernels.adamax import adamax_update
from fusedoptim.kernels.adopt import adopt_agreement, adopt_update
from fusedoptim.kernels.asgd import asgd_update
from fusedoptim.kernels.eg import eg_update
from fusedoptim.kernels.egstepsize import egstepsize_update
from fusedoptim.kernels.lamb import lamb_reduce, lamb_update
from fusedoptim.kernels.lars import lars_reduce, lars_update
from fusedoptim.kernels.lion import lion_agreement, lion_update
from fusedoptim.kernels.radam import radam_update
from fusedoptim.kernels.nadam import nadam_update
from fusedoptim.kernels.rmsprop import rmsprop_update
from fusedoptim.kernels.rprop import rprop_update
from fusedoptim.kernels.schedule_free import schedule_free_adamw_update, schedule_free_sgd_update
from fusedoptim.kernels.sgd import sgd_agreement, sgd_update
from fusedoptim.kernels.elementwise import never
from fusedoptim.kernels.sgdhd import sgdhd_hypergradient, sgdhd_update
from fusedoptim.kernels.signsgd import signsgd_update
from fusedoptim.kernels.signum import signum_agreement, signum_update
from fusedoptim.kernels.tiger import tiger_reduce, tiger_reduce_reads_param, tiger_update, tiger_update_reads_param
from fusedoptim.optim.hyperparameters import (CAUTIOUS, DECOUPLED, MAXIMIZE, TRAIN_MODE, Hyperparameter,
                                              at_least_zero, at_most_one, betas, bounds, bounds_in_kernel, eps,
                                              etas_around_one, flag, fraction, integer_at_least_zero, lr, momentum,
                                              nesterov, nonnegative, open_fraction, optional_warmup,
                                              pair_of_interpolations, param_kind, positive_integer, schedule,
                                              schedule_in_kernel, shrink, step_size_range, triple_of_fractions,
                                              weight_decay)
from fusedoptim.optim.reference.adadelta import adadelta
from fusedoptim.optim.reference.ademamix import advance_alpha_and_slow_weight, ademamix
from fusedoptim.optim.reference.adagrad import adagrad
from fusedoptim.optim.reference.adam import adam, adamw
from fusedoptim.optim.reference.adamax import adamax
from fusedoptim.optim.reference.adopt import adopt
from fusedoptim.optim.reference.asgd import advance_eta_and_mu, asgd
from fusedoptim.optim.reference.eg import eg
from fusedoptim.optim.reference.egstepsize import egstepsize
from fusedoptim.optim.reference.lamb import lamb
from fusedoptim.optim.reference.lars import lars, lars_constants
from fusedoptim.optim.reference.lion import lion
from fusedoptim.optim.reference.radam import radam
from fusedoptim.optim.reference.nadam import advance_mu_product, nadam
from fusedoptim.optim.reference.rmsprop import rmsprop
from fusedoptim.optim.reference.rprop import rprop
from fusedoptim.optim.reference.schedule_free import (advance_schedule_free, schedule_free_adamw, schedule_free_sgd,
                                                     to_eval, to_train)
from fusedoptim.optim.reference.sgd import sgd
from fusedoptim.optim.reference.sgdhd import sgdhd
from fusedoptim.optim.reference.sparse_adam import sparse_adam
from fusedoptim.optim.reference.signsgd import signsgd
from fusedoptim.optim.reference.signum import signum
from fusedoptim.optim.reference.tiger import tiger
from fusedoptim.optim.param_groups import tiger_constants, tiger_param_groups, tiger_sum_of_squares_over

from fusedoptim.optim.adafactor import ADAFACTOR
from fusedoptim.optim.factored_rule import factored_row
from fusedoptim.optim.history_rule import history_row
from fusedoptim.optim.lbfgs import LBFGS_RULE
from fusedoptim.optim.matrix_rule import matrix_row
from fusedoptim.optim.muon import MUON
from fusedoptim.optim.rule import (FIRST_STEP, TOLERANCES, Modes, Rule, ScalarUpdate, State, Sum, Tolerance,
                                   caution)

ADAM_HYPERPARAMETERS = (lr(1e-3), betas((0.9, 0.999)), eps(1e-8, "added to the denominator √v̂ + eps"), weight_decay(0),
                        flag("amsgrad", "divide by the running maximum of v̂ (Reddi et al. 2018)"), MAXIMIZE, CAUTIOUS)
ADAM_STATES = (State("exp_avg"), State("exp_avg_sq", kind="nonnegative"),
               State("max_exp_avg_sq", when="amsgrad", kind="nonnegative"))
ADAM_CAUTION = caution(("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))

# Schedule-Free (Defazio et al. 2024), as the package schedulefree: its warm-up and averaging weights, its
# running scalars (k, γ_max, W) kept per param and advanced on the device, its train/eval switch.
SCHEDULE_FREE_HYPERPARAMETERS = (
    Hyperparameter("warmup_steps", 0, integer_at_least_zero, "W: the lr grows linearly, (k + 1)/W·lr at the "
                   "k-th step, over the first W steps", kernel="number", test_value=3,
                   bad=((-1, "integer >= 0"), (2.5, "integer >= 0"))),
    nonnegative("r", 0.0, "the power of t in the averaging weight w_t = t^r·γ_max^weight_lr_power", kernel="host"),
    nonnegative("weight_lr_power", 2.0, "the power of the largest lr so far in the averaging weight (0: equal "
                "weights)", kernel="host"),
    TRAIN_MODE)
SCHEDULE_FREE = dict(
    # step, γ_max (the largest lr so far, from −1 as the package), W_t (the running sum of the averaging
    # weights) and c_t = w_t/W_t (ckp1), advanced on the device before each update
    scalar_states=("step", "lr_max", "weight_sum", "ckp1"), scalar_initial={"lr_max": -1.0},
    scalar_updates=(ScalarUpdate(("lr_max", "weight_sum", "ckp1"), advance_schedule_free),),
    modes=Modes(train=to_train, eval=to_eval, reads=("z",)))

RULES = {
    rule.name: rule
    for rule in (
        Rule(
            name="SGD",
            summary="Gradient descent; momentum (Polyak 1964), Nesterov momentum (Sutskever et al. 2013), "
                    "dampening, L2 weight decay",
            reference=sgd, update=sgd_update,
            hyperparameters=(lr(1e-3), momentum(0),
                             nonnegative("dampening", 0, "the momentum buffer takes (1 − dampening)·g"),
                             weight_decay(0),
                             Hyperparameter("nesterov", False, nesterov, "step along g + momentum·b (Nesterov "
                                            "momentum; needs momentum > 0 and dampening 0)", kernel="flag", bad=(
                                 ("on", "True or False"), (True, "needs momentum > 0"))), MAXIMIZE, CAUTIOUS),
            states=(State("momentum_buffer", when="momentum", initial=FIRST_STEP),),
            sums=(caution(("param", "grad", "momentum_buffer")),), reduce=sgd_agreement,
            torch_twin=torch.optim.SGD, complex_params=True, sparse_gradients=True,
        ),
        Rule(
            name="Adagrad",
            summary="Per-coordinate lr from the sum of squared gradients (Duchi, Hazan & Singer 2011)",
            reference=adagrad, update=adagrad_update,
            hyperparameters=(lr(1e-2), nonnegative("lr_decay", 0, "the step is lr / (1 + (t − 1)·lr_decay)"),
                             weight_decay(0),
                             nonnegative("initial_accumulator_value", 0, "the starting value of the sum of "
                                         "squared gradients"),
                             eps(1e-10, "added after the square root of the sum"), MAXIMIZE),
            states=(State("sum", initial="initial_accumulator_value", kind="accumulator"),), scalar_states=("step",),
            torch_twin=torch.optim.Adagrad, complex_params=True, sparse_gradients=True,
        ),
        Rule(
            name="RMSprop",
            summary="Per-coordinate lr from a running mean of squared gradients (Hinton 2012; centered: Graves 2013)",
            reference=rmsprop, update=rmsprop_update,
            hyperparameters=(lr(1e-2), nonnegative("alpha", 0.99, "the decay rate of the running mean of g²"),
                             eps(1e-8, "added after the square root"), weight_decay(0),
                             momentum(0, present=lambda value: value > 0),
                             flag("centered", "divide by the running variance of g instead of its mean square "
                                  "(Graves 2013)"), MAXIMIZE),
            states=(State("square_avg", kind="nonnegative"),
                    State("momentum_buffer", when=lambda group: group["momentum"] > 0, when_text="momentum > 0"),
                    State("grad_avg", when="centered")),
            scalar_states=("step",), torch_twin=torch.optim.RMSprop, complex_params=True,
            # The momentum buffer sums terms g/(√v + ε) as large as 1/√(1 − α) = 10 that cancel to
            # ~0.1: one fp32 ulp of a term (1e-6), from another operation order (torch's CPU kernels
            # round g + λθ once), becomes a few 1e-6 absolute over 20 steps.
            tolerances={**TOLERANCES, torch.float32: Tolerance(atol=1e-5, rtol=1e-5)},
        ),
        Rule(
            name="Adadelta",
            summary="Step sizes from running means of squared gradients and squared updates (Zeiler 2012)",
            reference=adadelta, update=adadelta_update,
            hyperparameters=(lr(1.0, "scales the step Δ (1.0: Zeiler's Adadelta, which has no lr)"),
                             Hyperparameter("rho", 0.9, at_most_one, "the decay rate of the running means of g² "
                                            "and Δ²", bad=((1.5, "must be in [0, 1]"),)),
                             eps(1e-6, "added inside both square roots"), weight_decay(0), MAXIMIZE),
            states=(State("square_avg", kind="nonnegative"), State("acc_delta", kind="nonnegative")),
            scalar_states=("step",),
            torch_twin=torch.optim.Adadelta, complex_params=True,
        ),
        Rule(
            name="Adam",
            summary="Adaptive moments with bias correction, L2 weight decay (Kingma & Ba 2015); AMSGrad's running "
                    "max (Reddi et al. 2018)",
            reference=adam, update=adam_update,
            hyperparameters=ADAM_HYPERPARAMETERS, states=ADAM_STATES, scalar_states=("step",),
            sums=(ADAM_CAUTION,), reduce=adam_agreement, flags={"DECOUPLED_WEIGHT_DECAY": False}, torch_twin=torch.optim.Adam, complex_params=True,
        ),
        Rule(
            name="AdamW",
            summary="Adam with decoupled weight decay θ ← θ(1 − ηλ) (Loshchilov & Hutter 2019)",
            reference=adamw, update=adam_update,
            hyperparameters=tuple(weight_decay(1e-2, DECOUPLED) if spec.name == "weight_decay" else spec
                                  for spec in ADAM_HYPERPARAMETERS), states=ADAM_STATES, scalar_states=("step",),
            sums=(ADAM_CAUTION,), reduce=adam_agreement, flags={"DECOUPLED_WEIGHT_DECAY": True}, torch_twin=torch.optim.AdamW, complex_params=True,
        ),
        Rule(
            name="Adamax",
            summary="Adam with the infinity norm: m over a running max of the gradient's magnitude (Kingma & Ba "
                    "2015, section 7.1)",
            reference=adamax, update=adamax_update,
            hyperparameters=(lr(2e-3), betas((0.9, 0.999), "(β1, β2): the decay rates of the running mean of the "
                                            "gradient and of the running max of its magnitude"),
                             eps(1e-8, "added to |g| inside the running max: u ← max(β2·u, |g| + eps)"),
                             weight_decay(0), MAXIMIZE),
            # exp_inf is a max of |g| + eps, so positive: the nonnegative scheme gives it a code of at least 1,
            # never the 0 that m/u would divide by.
            states=(State("exp_avg"), State("exp_inf", kind="nonnegative")), scalar_states=("step",),
            torch_twin=torch.optim.Adamax, complex_params=True,
        ),
        Rule(
            name="RAdam",
            summary="Adam whose adaptive lr is rectified for its variance, bias-corrected momentum alone while "
                    "ρ_t ≤ 5 (Liu et al. 2020)",
            reference=radam, update=radam_update,
            hyperparameters=(lr(1e-3), betas((0.9, 0.999)),
                             eps(1e-8, "added to √v, before √(1 − β2ᵗ) corrects it (unlike Adam's √v̂ + eps)"),
                             weight_decay(0, "the weight decay λ: L2 added to the gradient, g ← g + λ·θ, or "
                                          "decoupled (see decoupled_weight_decay)"),
                             flag("decoupled_weight_decay", "decay θ ← θ·(1 − lr·λ) before the update instead of "
                                  "adding λ·θ to the gradient (AdamW's decay)"), MAXIMIZE),
            states=(State("exp_avg"), State("exp_avg_sq", kind="nonnegative")), scalar_states=("step",),
            torch_twin=torch.optim.RAdam, complex_params=True,
        ),
        Rule(
            name="NAdam",
            summary="Adam with Nesterov momentum under a warming momentum schedule μ_t, L2 or decoupled weight "
                    "decay (Dozat 2016)",
            reference=nadam, update=nadam_update,
            hyperparameters=(lr(2e-3), betas((0.9, 0.999)), eps(1e-8, "added after the square root: √v̂ + eps"),
                             weight_decay(0, "the weight decay λ: added to the gradient, g ← g + λ·θ, or with "
                                          "decoupled_weight_decay θ ← θ·(1 − lr·λ) before the update"),
                             nonnegative("momentum_decay", 4e-3, "ψ of the momentum schedule "
                                         "μ_t = β1·(1 − ½·0.96^(t·ψ))"),
                             flag("decoupled_weight_decay", "decay θ ← θ·(1 − lr·λ) instead of adding λ·θ to "
                                  "the gradient (NAdamW, as AdamW is to Adam)"), MAXIMIZE),
            states=(State("exp_avg"), State("exp_avg_sq", kind="nonnegative")),
            # mu_product, μ_1···μ_t, as torch names and keeps it: advanced on the device before each update
            scalar_states=("step", "mu_product"), scalar_initial={"mu_product": 1.0},
            scalar_updates=(ScalarUpdate(("mu_product",), advance_mu_product),),
            torch_twin=torch.optim.NAdam, complex_params=True,
        ),
        Rule(
            name="AdEMAMix",
            summary="Adam's step from a mix of a fast and a slow EMA of the gradient, (m̂1 + α·m2)/(√ν̂ + ε), α and "
                    "β3 warmed up; AdamW's decay (Pagliardini et al. 2024; apple/ml-ademamix's arguments)",
            reference=ademamix, update=ademamix_update,
            hyperparameters=(
                lr(1e-3),
                Hyperparameter("betas", (0.9, 0.999, 0.9999), triple_of_fractions, "(β1, β2, β3): the decay rates "
                               "of the fast EMA m1, of ν (the gradient's square) and of the slow EMA m2",
                               to_kernel=lambda value: ({"beta1": float(value[0]), "beta2": float(value[1])}, {}),
                               bad=(((0.9, 0.999), "triple"), ((0.9, 0.999, 1.0), "beta3"),
                                    (tuple(map(torch.tensor, (0.9, 0.999, 0.9999))), "Python number"))),
                nonnegative("alpha", 2.0, "α: the slow EMA's weight in the step, m̂1 + α·m2", kernel="host"),
                Hyperparameter("beta3_warmup", None, optional_warmup, "None, or T: β3_t grows from β1 to β3 over T "
                               "steps, its half-life linear in t (the authors' scheduler)", kernel="host",
                               test_value=4, bad=((0, "None (no warm-up) or an integer >= 1"), (2.5, "integer"))),
                Hyperparameter("alpha_warmup", None, optional_warmup, "None, or T: α_t grows linearly from 0 to α over "
                               "T steps", kernel="host", test_value=3,
                               bad=((0, "None (no warm-up) or an integer >= 1"), ("10", "integer"))),
                eps(1e-8, "added to the denominator √ν̂ + eps"),
                weight_decay(0, "AdamW's decay λ, of the θ before the step: θ ← θ − lr·(update + λθ)"), CAUTIOUS),
            states=(State("exp_avg_fast"), State("exp_avg_slow"), State("exp_avg_sq", kind="nonnegative")),
            # caution masks m1 alone, against g (pytorch-optimizer's cautious AdEMAMix)
            sums=(caution(("grad", "exp_avg_fast"), "the fast EMA m1 agrees in sign with g"),),
            reduce=ademamix_agreement, reduce_reads_param=never,
            # α_t and 1 − β3_t, from the step, on the device before each update (1 − β3_t in fp64 there: in
            # the kernel's fp32, 1 − 0.9999 keeps 3 digits)
            scalar_states=("step", "alpha_t", "one_minus_beta3_t"),
            scalar_updates=(ScalarUpdate(("alpha_t", "one_minus_beta3_t"), advance_alpha_and_slow_weight),),
        ),
        Rule(
            name="ADOPT",
            summary="Adam normalizing g by the previous steps' v before the momentum, clipped to ±t^¼ (Taniguchi et "
                    "al. 2024); pytorch-optimizer's ADOPT",
            reference=adopt, update=adopt_update,
            hyperparameters=(lr(1e-3), betas((0.9, 0.9999)),
                             weight_decay(0, "the weight decay λ: added to the gradient, g ← g + λ·θ, or with "
                                          "weight_decouple θ ← θ·(1 − lr·λ) first"),
                             flag("weight_decouple", "decay θ ← θ·(1 − lr·λ) instead of adding λ·θ to the gradient"),
                             flag("fixed_decay", "with weight_decouple, θ ← θ·(1 − λ): the lr does not scale the decay"),
                             eps(1e-6, "the floor of the denominator: g / max(√v, eps)"), MAXIMIZE, CAUTIOUS),
            # v is made by the first step (v = g², θ moved only by its decay), which the kernel sees as a flag
            states=(State("exp_avg"), State("exp_avg_sq", initial=FIRST_STEP, kind="nonnegative")),
            scalar_states=("step",),
            # caution masks η·m against the normalized gradient, not g (pytorch-optimizer's cautious ADOPT)
            sums=(caution(("param", "grad", "exp_avg", "exp_avg_sq"), "the step agrees in sign with the normalized "
                          "gradient ĝ"),), reduce=adopt_agreement,
        ),
        Rule(
            name="ASGD",
            summary="SGD with a decaying step size and a running average of the iterates after t0 (Polyak & "
                    "Juditsky 1992)",
            reference=asgd, update=asgd_update,
            hyperparameters=(lr(1e-2, "the learning rate lr, the first step size η"),
                             nonnegative("lambd", 1e-4, "λ: the decay term θ ← θ·(1 − λ·η) each step, and the "
                                         "step size's decay η_t = lr / (1 + λ·lr·t)^α"),
                             nonnegative("alpha", 0.75, "α, the power of the step size's decay", kernel="host"),
                             nonnegative("t0", 1e6, "the step from which ax averages the iterates "
                                         "(μ_t = 1 / max(1, t − t0)); before it ax = θ", kernel="host"),
                             weight_decay(0), MAXIMIZE),
            states=(State("ax"),),
            # eta and mu, η and μ as torch names and keeps them: advanced on the device after each update,
            # which reads them as the previous step left them
            scalar_states=("step", "eta", "mu"), scalar_initial={"eta": "lr", "mu": 1.0},
            scalar_updates=(ScalarUpdate(("eta", "mu"), advance_eta_and_mu, after_update=True),),
            torch_twin=torch.optim.ASGD, complex_params=True,
        ),
        Rule(
            name="Rprop",
            summary="Resilient backpropagation: per-coordinate step sizes grown where the gradient keeps its sign, "
                    "shrunk where it flips; θ moves by the sign (Riedmiller & Braun 1993)",
            reference=rprop, update=rprop_update,
            hyperparameters=(lr(1e-2, "every step size's start, at its param's first step (changing lr later does "
                                  "not reach the step sizes, as in torch)"),
                             Hyperparameter("etas", (0.5, 1.2), etas_around_one, "(etaminus, etaplus): the factors "
                                            "of a step size where the gradient's sign flips and where it holds",
                                            to_kernel=lambda value: ({"etaminus": float(value[0]),
                                                                      "etaplus": float(value[1])}, {}),
                                            bad=(((1.0, 0.5), "0 < etaminus < 1 < etaplus"), ((0.5, 1.0), "etaplus"),
                                                 ((0.5,), "pair"))),
                             Hyperparameter("step_sizes", (1e-6, 50), step_size_range, "(step_size_min, "
                                            "step_size_max): every step size is clamped to it after its update",
                                            to_kernel=lambda value: ({"step_size_min": float(value[0]),
                                                                      "step_size_max": float(value[1])}, {}),
                                            bad=(((50, 1e-6), "step_size_min <= step_size_max"),
                                                 ((-1e-6, 50), "0 <= step_size_min"), ((1e-6,), "pair"))),
                             MAXIMIZE),
            # step_size is positive and changes by factors (etaminus, etaplus): the multiplicative scheme's
            # stochastic rounding moves its code by a factor of 1.2 on average, where round to nearest would
            # keep a small code (3·√1.2 = 3.3 rounds back to 3) forever, and it never codes a positive Δ as 0.
            # prev is a gradient (only its sign is read): signed.
            states=(State("prev"), State("step_size", initial="lr", kind="multiplicative")),
            scalar_states=("step",), torch_twin=torch.optim.Rprop, complex_params=True,
        ),
        Rule(
            name="SparseAdam",
            summary="Adam masked to the entries a sparse gradient holds: the others keep θ, m and v (Kingma & Ba "
                    "2015; torch's SparseAdam)",
            reference=sparse_adam,
            # lr > 0 and eps > 0, as torch.optim.SparseAdam checks them (the others accept 0)
            hyperparameters=(lr(1e-3, zero=False), betas((0.9, 0.999)),
                             eps(1e-8, "added after the square root, before the bias correction: √v + eps", zero=False),
                             MAXIMIZE),
            states=(State("exp_avg"), State("exp_avg_sq", kind="nonnegative")), scalar_states=("step",),
            # Reference only: its work is a gather and a scatter of the held rows, which the dense
            # multi-tensor kernel does not do (it walks every element of θ).
            impls=("reference",), only_sparse_gradients=True, torch_twin=torch.optim.SparseAdam,
        ),
        Rule(
            name="Lion",
            summary="Sign of an interpolated momentum, decoupled decay (Chen et al. 2023); lion-pytorch's arguments",
            reference=lion, update=lion_update,
            hyperparameters=(lr(1e-4),
                             betas((0.9, 0.99), "(β1, β2): the update is sign(β1·m + (1 − β1)·g), then "
                                   "m ← β2·m + (1 − β2)·g"),
                             weight_decay(0.0, "the weight decay λ: θ ← θ·(1 − lr·λ) before the update"),
                             flag("decoupled_weight_decay", "decay relative to the lr given at construction: "
                                  "θ ← θ·(1 − lr·λ/lr₀), as lion-pytorch's decoupled_weight_decay"),
                             Hyperparameter("lr_at_construction", 1e-4, at_least_zero, "recorded from lr at "
                                            "construction (lr₀ above); not an argument", tensor=True,
                                            recorded=lambda arguments: arguments["lr"]), CAUTIOUS),
            states=(State("exp_avg"),), sums=(caution(("grad", "exp_avg")),), reduce=lion_agreement,
            reduce_reads_param=never,
            sign_flip_fraction=1e-4,
        ),
        Rule(
            name="SignSGD",
            summary="The sign of the gradient, decoupled decay (Bernstein et al. 2018)",
            reference=signsgd, update=signsgd_update,
            hyperparameters=(lr(1e-3), weight_decay(0.0, DECOUPLED)), states=(),
        ),
        Rule(
            name="Signum",
            summary="The sign of momentum, decoupled decay (Bernstein et al. 2018)",
            reference=signum, update=signum_update,
            # Signum's momentum interpolates (m ← βm + (1 − β)g): a fraction, unlike SGD's.
            hyperparameters=(lr(1e-3), Hyperparameter("momentum", 0.9, fraction, "β of the momentum "
                                                      "m ← β·m + (1 − β)·g, whose sign is the step", bad=(
                (1.5, "must be in [0, 1)"), (-0.1, "must be in [0, 1)"), (torch.tensor(0.9), "must be a Python number"))),
                weight_decay(0.0, DECOUPLED), CAUTIOUS), states=(State("exp_avg"),),
            sums=(caution(("grad", "exp_avg")),), reduce=signum_agreement, reduce_reads_param=never,
            sign_flip_fraction=1e-4,
        ),
        Rule(
            name="EG",
            summary="Exponentiated gradient θ ← θ·exp(−ηg) for non-negative params (Kivinen & Warmuth 1997)",
            reference=eg, update=eg_update,
            hyperparameters=(lr(1e-2),), states=(), nonnegative_params=True,
        ),
        Rule(
            name="EGStepSize",
            summary="Per-coordinate step sizes learned by exponentiated gradient, optionally bounded (after Amid "
                    "et al. 2022)",
            reference=egstepsize, update=egstepsize_update,
            hyperparameters=(lr(1e-2), nonnegative("gamma", 1e-2, "the lr of the step sizes' own exponentiated "
                                                   "gradient step, on g·g_prev"),
                             Hyperparameter("step_size_bounds", None, bounds, "None, or (low, high): each step size "
                                            "clipped to it after its update", to_kernel=bounds_in_kernel,
                                            test_variants=((0.5, 2.0),), bad=(
                ((0.0, 10.0), "0 < low <= high"), ((2.0, 1.0), "0 < low <= high"), (5.0, "None or a pair")))),
            states=(State("step_size", initial=1.0, kind="multiplicative"), State("prev_grad")),
        ),
        Rule(
            name="SGDHD",
            summary="SGD whose lr α follows its hypergradient β·⟨g, g_prev⟩ (Baydin et al. 2018); α is learnt on "
                    "the device, in group[\"lr\"] as a tensor",
            reference=sgdhd, update=sgdhd_update,
            hyperparameters=(lr(1e-3, "the starting lr, which then learns on the device"),
                             nonnegative("hypergrad_lr", 1e-6, "β: the lr moves by β·⟨g, g_prev⟩ over every param "
                                         "of the group at each step", test_value=1e-4)),
            # prev_grad is read by the reduce alone: the update overwrites it with g
            states=(State("prev_grad", update_reads=False),),
            sums=(Sum("hypergradient", "β·g·g_prev", reads=("grad", "prev_grad"), over="group", into="lr"),),
            reduce=sgdhd_hypergradient, reduce_reads_param=never, learns_lr=True,
            release_refused="its lr moves by one dot product ⟨g, g_prev⟩ over every param's gradient, which no "
                            "single param's gradient hook has",
        ),
        Rule(
            name="ScheduleFreeAdamW",
            summary="AdamW without a schedule: y, where the gradient is taken, interpolates the base sequence z "
                    "and its average x; train()/eval() switch the params between y and x (Defazio et al. 2024)",
            reference=schedule_free_adamw, update=schedule_free_adamw_update,
            hyperparameters=(lr(2.5e-3, "the learning rate γ (after warm-up)"),
                             betas((0.9, 0.999), "(β1, β2): β1 the interpolation y = (1 − β1)·z + β1·x, β2 the "
                                   "decay rate of the running mean of g²", check=pair_of_interpolations,
                                   bad=(((0.0, 0.999), "beta1 in (0, 1)"),)),
                             eps(1e-8, "added to the denominator √v̂ + eps"),
                             weight_decay(0, "the weight decay λ, added to the normalized gradient at y: ĝ + λ·y"),
                             *SCHEDULE_FREE_HYPERPARAMETERS),
            states=(State("z", initial=FIRST_STEP), State("exp_avg_sq", kind="nonnegative")), **SCHEDULE_FREE,
        ),
        Rule(
            name="ScheduleFreeSGD",
            summary="SGD without a schedule: y interpolates the base sequence z and its average x; train()/eval() "
                    "switch the params between y and x (Defazio et al. 2024)",
            reference=schedule_free_sgd, update=schedule_free_sgd_update,
            hyperparameters=(lr(1.0, "the learning rate γ (after warm-up)"),
                             Hyperparameter("momentum", 0.9, open_fraction, "β, the interpolation y = (1 − β)·z + "
                                            "β·x", bad=((0.0, "must be in (0, 1)"), (1.0, "must be in (0, 1)"))),
                             weight_decay(0, "the weight decay λ, added to the gradient at y: g + λ·y"),
                             *SCHEDULE_FREE_HYPERPARAMETERS),
            states=(State("z", initial=FIRST_STEP),), **SCHEDULE_FREE,
        ),
        Rule(
            name="Tiger",
            summary="Lion with β1 = β2, per-tensor lr, built-in accumulation, NaN guard (Su 2023); bojone/tiger's "
                    "arguments",
            reference=tiger, update=tiger_update,
            hyperparameters=(
                lr(1e-3, "the base lr η, times the schedule's multiplier; each tensor takes η·RMS(θ) (a matrix; "
                   "an embedding: per row) or η/2 (biases, normalization weights): see param_kind"),
                Hyperparameter("beta", 0.965, fraction, "β of the momentum m ← β·m + (1 − β)·g, whose sign is "
                               "the step (Lion with β1 = β2)", bad=((1.0, "must be in [0, 1)"), (-0.5, "[0, 1)"))),
                weight_decay(0.01, "the decoupled weight decay λ, on matrices and embeddings only"),
                Hyperparameter("grad_accum_steps", 1, positive_integer, "gradients of this many steps are folded "
                               "into the momentum before θ moves once (built-in accumulation: call step() after "
                               "every backward)", test_variants=(3,),
                               bad=((0, "integer >= 1"), (2.5, "integer >= 1"))),
                Hyperparameter("shrink_ratio", 0.99, shrink, "the NaN guard: a micro-step whose gradient holds "
                               "a NaN keeps m and shrinks θ toward its center, θ ← (θ − c)·s + c (c = 1 for "
                               "normalization weights, else 0; 1: leaves θ)",
                               bad=((0.0, "must be in (0, 1]"), (1.5, "(0, 1]"))),
                Hyperparameter("lr_schedule", {0: 1}, schedule, "{step: multiplier}: the lr multiplier, "
                               "piecewise linear between the given steps, held after the last (computed on the "
                               "device)", to_kernel=schedule_in_kernel,
                               test_variants=({2: 1.0, 5: 0.25},), bad=(
                    ({}, "non-empty dict"), ({-5: 1.0}, "steps >= 0"), ({0: float("nan")}, "finite number"),
                    ([(0, 1.0)], "non-empty dict"))),
                Hyperparameter("param_kind", "auto", param_kind, "the tensor's class, which sets its lr and decay: "
                               "'matrix', 'embedding', 'normalization' or 'bias' ('auto': a tensor of one "
                               "dimension or none is a bias, else a matrix; fo.tiger_param_groups(model) sets it "
                               "per module)", kernel="host",
                               bad=(("conv", "must be one of"),),
                               test_variants=("embedding", "normalization", "matrix")), CAUTIOUS),
            param_groups=tiger_param_groups,
            states=(State("m"),), scalar_states=("step", "nan_skips"), counters=("nan_skips",),
            tensor_constants=tiger_constants,
            # the NaN guard's verdict on the whole gradient, and RMS(θ) of a matrix or of each row of an embedding
            sums=(Sum("nan_count", "1 where g is NaN", reads=("grad",), counts="nan_skips"), caution(("grad", "m")),
                  Sum("sum_of_squares", "θ²", reads=("param",), over=tiger_sum_of_squares_over)),
            reduce=tiger_reduce, reduce_reads_param=tiger_reduce_reads_param,
            update_reads_param=tiger_update_reads_param, plan_keys=("param_kind",), sign_flip_fraction=1e-4,
            folds_gradients=True, step_per_optimizer=True,
        ),
        Rule(
            name="LAMB",
            summary="Adam's bias-corrected direction plus λθ, scaled per tensor by the trust ratio ‖θ‖/‖r + λθ‖ "
                    "(You et al. 2019)",
            reference=lamb, update=lamb_update,
            hyperparameters=(lr(1e-3), betas((0.9, 0.999)), eps(1e-6, "added after the square root: √v̂ + eps"),
                             weight_decay(0, "λ: λθ added to the Adam direction r inside the trust ratio, "
                                         "θ ← θ − lr·(‖θ‖/‖r + λθ‖)·(r + λθ)"), MAXIMIZE),
            states=(State("exp_avg"), State("exp_avg_sq", kind="nonnegative")), scalar_states=("step",),
            # ‖u‖ is of this step's u = r + λθ: the reduce recomputes the new m and v from g, m and v
            # (not stored), so it reads all four.
            sums=(Sum("param_square", "θ²", reads=("param",)),
                  Sum("direction_square", "(r + λθ)², r from this step's m, v", reads=("param", "grad", "exp_avg",
                                                                                      "exp_avg_sq"))),
            reduce=lamb_reduce,
        ),
        Rule(
            name="LARS",
            summary="Momentum SGD with a per-tensor trust ratio k‖θ‖/(‖g‖ + λ‖θ‖) on tensors of two or more "
                    "dimensions (You et al. 2017); pytorch-optimizer's LARS",
            reference=lars, update=lars_update,
            hyperparameters=(lr(1e-3),
                             weight_decay(0, "λ, on tensors of two or more dimensions only: g ← s·(g + λθ), and "
                                         "λ‖θ‖ in the trust ratio's denominator"),
                             Hyperparameter("momentum", 0.9, fraction, "μ of the buffer b ← μ·b + (1 − dampening)·g "
                                            "(0: no buffer is kept)",
                                            to_kernel=lambda value: ({"momentum": float(value)},
                                                                     {"HAS_MOMENTUM": float(value) > 0}),
                                            bad=((1.0, "must be in [0, 1)"), (-0.1, "[0, 1)"))),
                             Hyperparameter("dampening", 0.0, fraction, "τ: the buffer takes (1 − τ)·g, from the "
                                            "first step (the buffer starts at zero)", bad=((1.0, "[0, 1)"),)),
                             nonnegative("trust_coefficient", 1e-3, "k of the trust ratio s = k‖θ‖/(‖g‖ + λ‖θ‖)",
                                         test_value=0.1),
                             flag("nesterov", "step along g + μ·b (Nesterov momentum)"), MAXIMIZE),
            # the momentum sums trust-scaled steps: on FSDP2 its last bits follow the order of the shards' sums
            states=(State("momentum_buffer", when=lambda group: group["momentum"] > 0, when_text="momentum > 0",
                          from_sums=True),),
            tensor_constants=lars_constants,
            sums=(Sum("param_square", "θ²", reads=("param",)), Sum("grad_square", "g²", reads=("grad",))),
            reduce=lars_reduce,
        ),
    )
}

# The rules of other shapes (optim.rule.SHAPES): declared here beside the element-wise rows, with their
# own classes.
SHAPED_RULES = {
    rule.name: rule
    for rule in (
        matrix_row(MUON),  # its declaration: optim.muon, the class made from it (optim.matrix_rule)
        factored_row(ADAFACTOR),  # its declaration: optim.adafactor, the class made from it (optim.factored_rule)
        history_row(LBFGS_RULE),  # its declaration: optim.lbfgs, the class made from it (optim.history_rule)
    )
}
