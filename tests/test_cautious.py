"""cautious=True (Liang et al. 2024, "Cautious Optimizers"), the flag every momentum rule declares once
(``optim.hyperparameters.CAUTIOUS``): both impls against lion-pytorch's and pytorch-optimizer's cautious
Lion, AdEMAMix and ADOPT, and against the paper's equations written out here for the rules no peer has
cautious (AdamW, Adam, Signum, Tiger, SGD). Several steps, so that the mask acts on a momentum that earlier masked steps moved;
params and every state. The registry suites (parity, bad input, quantized state) run it as a variant
of their own (a boolean declaration is switched by them by itself)."""
import lion_pytorch.cautious_lion
import pytest
import pytorch_optimizer
import torch

from conftest import DEVICE, assert_close, make_params, random_grads
from fusedoptim import optim
from fusedoptim.optim.rule import TOLERANCES

SHAPES = [(64,), (5, 24)]  # several tensors, so that each is masked by its own mean, and a tail block
STEPS = 4
IMPLS = ("triton", "reference")


def paper(u, g):
    """Algorithm 2 of the paper: φ = 1[u·g > 0]; u·φ / max(mean φ, 1e-3), the mean over the whole tensor."""
    mask = (u * g > 0).float()
    return u * mask / max(mask.mean().item(), 1e-3)


def run(optimizer, params, steps=STEPS, seed=1, grads=random_grads):
    for t in range(steps):
        for p, g in zip(params, grads(params, seed=seed + t)):
            p.grad = g
        optimizer.step()
    return optimizer


def ours(name, dtype=torch.float32, impl="triton", grads=random_grads, **options):
    params = [p.requires_grad_() for p in make_params(SHAPES, dtype)]
    return params, run(getattr(optim, name)(params, impl=impl, cautious=True, **options), params, grads=grads)


def compare(params, optimizer, expected_params, expected_states, what, tolerance=TOLERANCES[torch.float32]):
    for i, (param, expected) in enumerate(zip(params, expected_params)):
        assert_close(param, expected, tolerance, f"{what}: param {i}")
        for name, value in expected_states[i].items():
            assert_close(optimizer.state[param][name], value, tolerance, f"{what}: param {i} {name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_lion_equals_lion_pytorch_cautious_lion(impl):
    """lion-pytorch's cautious Lion (cautious_factor=0: the disagreeing elements dropped; its floor of the
    mean is 1e-5, ours the paper's 1e-3, equal while a tenth of a percent of a tensor agrees)."""
    options = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    params, optimizer = ours("Lion", impl=impl, **options)
    twins = [p.detach().clone().requires_grad_() for p in make_params(SHAPES, torch.float32)]
    twin = run(lion_pytorch.cautious_lion.Lion(twins, cautious_factor=0.0, **options), twins)
    compare(params, optimizer, twins, [{"exp_avg": twin.state[p]["exp_avg"]} for p in twins], f"Lion {impl}")


@pytest.mark.parametrize("impl", IMPLS)
def test_lion_equals_pytorch_optimizer_cautious_lion(impl, monkeypatch):
    """pytorch-optimizer's Lion(cautious=True): where it takes the step and which gradient it masks by.
    Its apply_cautious divides by (Σφ + 1)/numel, not by the paper's max(mean φ, 1e-3): a different
    normalization, a few percent on these tensors, so it is set to the paper's for the comparison."""
    def apply_cautious(update, grad):
        update.copy_(paper(update, grad))

    monkeypatch.setattr(pytorch_optimizer.optimizer.lion.Lion, "apply_cautious", staticmethod(apply_cautious))
    options = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    params, optimizer = ours("Lion", impl=impl, **options)
    twins = [p.detach().clone().requires_grad_() for p in make_params(SHAPES, torch.float32)]
    twin = run(pytorch_optimizer.Lion(twins, cautious=True, foreach=False, **options), twins)
    compare(params, optimizer, twins, [{"exp_avg": twin.state[p]["exp_avg"]} for p in twins], f"Lion {impl}")


def huge_second_gradient(params, seed):
    """Random gradients but for element 0 of each tensor: 1e30 on the second step (seed 2), so that v's
    g² overflows to inf there and the next steps' normalized gradient g/max(√v, ε) is 0 while m is not;
    +1 on the third, agreeing in sign with that m (made positive by the clipped ĝ of the 1e30)."""
    grads = random_grads(params, seed)
    for g in grads:
        g.view(-1)[0] = {2: 1e30, 3: 1.0}.get(seed, g.view(-1)[0].item())
    return grads


# (ours, its options, pytorch-optimizer's options, its state names for ours, our gradients): AdEMAMix's
# warm-up (one T for both, as the peer's t_alpha_beta3) shorter than the steps; ADOPT's steps where its
# normalized gradient is 0 and g is not, which tells the gradient it masks against.
PEERS = {"AdEMAMix": (dict(lr=1e-2, betas=(0.8, 0.99, 0.999), alpha=4.0, weight_decay=0.1, alpha_warmup=3,
                           beta3_warmup=3), dict(t_alpha_beta3=3, weight_decouple=True),
                      {"exp_avg_fast": "exp_avg", "exp_avg_slow": "exp_avg_slow", "exp_avg_sq": "exp_avg_sq"},
                      random_grads),
         "ADOPT": (dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, weight_decouple=True), {},
                   {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}, huge_second_gradient)}


@pytest.mark.filterwarnings("ignore:overflow encountered")  # ADOPT's g² of 1e30, on purpose
@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("impl", IMPLS)
def test_equals_pytorch_optimizer_cautious(name, impl, monkeypatch):
    """pytorch-optimizer's AdEMAMix and ADOPT with cautious=True, their apply_cautious set to the paper's
    normalization as above: what each masks (AdEMAMix m1 alone, against g; ADOPT η·m, against its
    normalized gradient ĝ, not g) and where."""
    def apply_cautious(update, grad):
        update.copy_(paper(update, grad))

    peer = getattr(pytorch_optimizer, name)
    monkeypatch.setattr(peer, "apply_cautious", staticmethod(apply_cautious))
    options, peer_options, state_names, grads = PEERS[name]
    params, optimizer = ours(name, impl=impl, grads=grads, **options)
    twins = [p.detach().clone().requires_grad_() for p in make_params(SHAPES, torch.float32)]
    peer_options = {k: v for k, v in options.items() if not k.endswith("_warmup")} | peer_options
    twin = run(peer(twins, cautious=True, foreach=False, **peer_options), twins, grads=grads)
    compare(params, optimizer, twins, [{ours_: twin.state[p][theirs] for ours_, theirs in state_names.items()}
                                       for p in twins], f"{name} {impl}")


def written_out(name, options, steps=STEPS):
    """The paper's cautious rules, from their equations: the step u (before θ ← θ − u, without the decay)
    masked by ``paper``. Returns (params, states)."""
    params = make_params(SHAPES, torch.float32)
    lr, decay = options["lr"], options.get("weight_decay", 0.0)
    states = [{} for _ in params]
    for t in range(1, steps + 1):
        for p, g, s in zip(params, random_grads(params, seed=t), states):
            if name in ("AdamW", "Adam"):  # C-AdamW: m̂/(√v̂ + ε), AdamW's decoupled or Adam's L2 decay
                b1, b2 = options["betas"]
                g = g + decay * p if name == "Adam" else g
                s["exp_avg"] = b1 * s.get("exp_avg", 0) + (1 - b1) * g
                s["exp_avg_sq"] = b2 * s.get("exp_avg_sq", 0) + (1 - b2) * g * g
                u = lr * (s["exp_avg"] / (1 - b1**t)) / ((s["exp_avg_sq"] / (1 - b2**t)).sqrt() + 1e-8)
                p.copy_((p * (1 - lr * decay) if name == "AdamW" else p) - paper(u, g))
            elif name == "Signum":  # C-Signum: η·sign(m), m ← β·m + (1 − β)·g
                s["exp_avg"] = options["momentum"] * s.get("exp_avg", 0) + (1 - options["momentum"]) * g
                p.copy_(p * (1 - lr * decay) - paper(lr * s["exp_avg"].sign(), g))
            elif name == "Tiger":  # Lion with β1 = β2: η·RMS(θ) for a matrix, η/2 and no decay for a vector
                s["m"] = options["beta"] * s.get("m", 0) + (1 - options["beta"]) * g
                scale, decay_ = (p.pow(2).mean().sqrt(), decay) if p.dim() > 1 else (0.5, 0.0)
                p.copy_(p - lr * scale * (paper(s["m"].sign(), g) + decay_ * p))
            else:  # C-SGD: η·b, b ← μ·b + g (the first b = g), Nesterov's g + μ·b
                mu = options["momentum"]
                s["momentum_buffer"] = mu * s["momentum_buffer"] + g if "momentum_buffer" in s else g
                d = g + mu * s["momentum_buffer"] if options.get("nesterov") else s["momentum_buffer"]
                p.copy_(p - paper(lr * d, g))
    return params, states


WRITTEN_OUT = [("AdamW", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)),
               ("Adam", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)),
               ("Signum", dict(lr=1e-2, momentum=0.9, weight_decay=0.1)),
               ("Tiger", dict(lr=1e-2, beta=0.9, weight_decay=0.1)),
               ("SGD", dict(lr=1e-2, momentum=0.9)),
               ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True))]


@pytest.mark.parametrize("name, options", WRITTEN_OUT, ids=lambda x: x if isinstance(x, str) else
                         "-".join(map(str, x.get("nesterov", "") and ["nesterov"])) or "plain")
@pytest.mark.parametrize("impl", IMPLS)
def test_rules_equal_the_papers_equations(name, options, impl):
    params, optimizer = ours(name, impl=impl, **options)
    expected_params, expected_states = written_out(name, options)
    tolerance = TOLERANCES[torch.float32]
    compare(params, optimizer, expected_params, expected_states, f"{name} {impl}", tolerance)


def test_bf16_kernel_equals_the_oracle():
    """bf16 params and states: the kernel against the oracle, within the registry's bf16 tolerance."""
    options = dict(lr=1e-2, weight_decay=0.1)
    params, optimizer = ours("AdamW", dtype=torch.bfloat16, **options)
    reference_params, reference = ours("AdamW", dtype=torch.bfloat16, impl="reference", **options)
    states = [{name: reference.state[p][name] for name in ("exp_avg", "exp_avg_sq")} for p in reference_params]
    compare(params, optimizer, reference_params, states, "AdamW bf16", TOLERANCES[torch.bfloat16])


def test_caution_changes_the_step_and_off_runs_no_reduce():
    """Caution on moves θ elsewhere than off (the mask acts); off, the plan lays out no sum, so no
    reduce launch runs and the step is the rule's as before."""
    on_params, _ = ours("AdamW")
    off_params = [p.requires_grad_() for p in make_params(SHAPES, torch.float32)]
    off = run(optim.AdamW(off_params, impl="triton"), off_params)
    assert not torch.equal(on_params[0], off_params[0])
    assert optim.RULES["AdamW"].sums_for(off.param_groups[0]) == ()


def test_refused_where_the_step_is_not_the_momentums():
    """Without momentum SGD's step is the gradient: the mask would only rescale it. Tiger's micro-step
    under accumulation holds a share of the gradient only. Both are refused, naming what to change."""
    with pytest.raises(ValueError, match="cautious.*needs momentum > 0"):
        optim.SGD([torch.zeros(3, device=DEVICE, requires_grad=True)], cautious=True)
    with pytest.raises(ValueError, match="cautious.*needs grad_accum_steps=1"):
        optim.Tiger([torch.zeros(3, device=DEVICE, requires_grad=True)], cautious=True, grad_accum_steps=2)
