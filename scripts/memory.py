"""Memory profile: optimizer state of every rule, and the peak of real training steps of a small GPT.

Two measurements, each next to its analytic model:

1. State bytes per param, every rule and precision policy: the registry's model (each element-wise
   state in the state dtype, each scalar state 4 bytes per tensor) against the sum of the bytes of
   the state tensors an optimizer holds after a step.
2. The peak memory of training (model made, two optimizer steps of k micro-batches each), for Adam,
   Lion and Tiger (``--rules`` for others), k = 1 and 4, every precision policy (``--policies``; --help
   lists them), and Tiger with and without gradient release. The analytic peak is

       params + grads held + optimizer state + backward

   with the first three from the registry and the dtypes. Gradients are held through a backward
   only where they accumulate in .grad across micro-batches (k > 1, rules that do not fold them).
   The backward term is measured once per policy with no optimizer, the same for every one: the
   activations with one gradient in flight (released, or added into one held), or the activations
   and the gradients autograd makes (none held before). With accumulation, Adam holds params +
   grads + 2 states, Lion params + grads + 1, Tiger with gradient release params + 1.

Peaks are torch.cuda.max_memory_allocated on a GPU. On a CPU they are the running sum of the
allocation and free events of torch.profiler (profile_memory=True); its categorised timeline is not
used, as it needs the Python tracer (minutes per step under the Triton interpreter) and it counts
only torch.optim's own classes as optimizer state: the categories here come from the model above.

Run: `python -m scripts.memory` (--help for the options); writes memory.csv, memory.md and
memory.png under runs/<machine>/, which git ignores; `--out reports/<machine>` writes them into the
committed reports/ instead, to keep them.
"""
import argparse
import contextlib
import gc
import os
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from fusedoptim import optim
from fusedoptim.optim.quantization import is_quantized
from fusedoptim.optim.registry import RULES, SHAPED_RULES
from scripts.gpt import GPT, GPT2_SMALL, GPTConfig
from scripts.plots import MiB, label, memory_bars
from scripts.report import OUT_HELP, describe, machine, markdown_table, report_directory, write_csv, written



@dataclass(frozen=True)
class Policy:
    param_dtype: torch.dtype
    state_dtype: object = None  # None: the param's dtype; a torch dtype, or "int8" / "int4" (codes and scales)
    stochastic_rounding: bool = False
    master_weight_bits: int = None  # bf16 params plus a residual: an fp32 (32) or 24-bit (24) master

    def options(self) -> dict:
        return dict(state_dtype=self.state_dtype, stochastic_rounding=self.stochastic_rounding,
                    master_weight_bits=self.master_weight_bits)


POLICIES = {
    "fp32": Policy(torch.float32),
    "bf16 params, fp32 state": Policy(torch.bfloat16, torch.float32),
    "pure bf16, stochastic rounding": Policy(torch.bfloat16, stochastic_rounding=True),
    "bf16 + 24-bit master, int8 state": Policy(torch.bfloat16, "int8", master_weight_bits=24),
    "bf16, int8 state, stochastic rounding": Policy(torch.bfloat16, "int8", stochastic_rounding=True),
}
# Persistent training memory, bytes per param (params + master residual + gradients held at the step +
# state), at most: issue 18's headline. Tiger with gradient release keeps 2 (bf16 θ) + 1 (residual) + 1
# (int8 m) + scales under any accumulation, or 2 + 1 without the residual (stochastic rounding instead);
# AdamW with int8 states and 24-bit masters keeps 2 + 1 + 2 (its bf16 gradients until the step) + 2·1,
# or without those gradients under gradient release. The 0.05 is the block scales' and scalars' share.
PERSISTENT_GOALS = {("Tiger", True, "bf16 + 24-bit master, int8 state"): 4.05,
                    ("Tiger", True, "bf16, int8 state, stochastic rounding"): 3.05,
                    ("AdamW", False, "bf16 + 24-bit master, int8 state"): 7.05,
                    ("AdamW", True, "bf16 + 24-bit master, int8 state"): 5.05}
HEADLINE_RULES = ("Adam", "Lion", "Tiger")
# The model trained: GPT-2 small itself on a GPU; on a CPU, where the Triton kernels run under the
# interpreter, a 120k-param GPT-2 in miniature (one block: 16 tensors). One sequence of 32 tokens (128 on a GPU) per
# micro-batch, so that most of the peak is what the optimizer keeps, not activations.
MODELS = {"cuda": (GPT2_SMALL, 128), "cpu": (GPTConfig(vocab=1024, context=32, width=64, blocks=1, heads=2), 32)}
# The peaks agree with the model when within this fraction of it; the report says which do not.
AGREEMENT = 0.03
# torch's profiler (libkineto) writes "USDT: ... profiler_start" and "... profiler_stop" to stderr
# around every profile, at its highest severity, above its own errors (libkineto's LoggerOutputType:
# STAGE 3, ERROR 4, USDT 5): no KINETO_LOG_LEVEL drops those lines and keeps its errors. The command
# sets 6, which drops both, unless KINETO_LOG_LEVEL is set already (4 shows libkineto's errors again);
# it is read when a process starts its first profile. What an error of the profiler would spoil does not
# pass silently: peak_memory fails when a profile recorded no allocation.
QUIET_KINETO_LOG_LEVEL = "6"


def peak_memory(fn, device: torch.device) -> int:
    """Bytes allocated at the peak of ``fn()``, beyond those allocated when it starts."""
    # Garbage from before (the previous profile's reference cycles hold a tensor) is freed now, not by
    # a collection inside the window: there a free of a block allocated before it would lower the
    # GPU's peak, and on a CPU is a free the profiler never saw allocated (c10 warns of it on stderr).
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    # kineto_results holds every allocation (+bytes) and free (-bytes) with its time.
    events = sorted((e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    if not events:
        raise RuntimeError("torch.profiler recorded no allocation (profile_memory=True) in a step that allocates: "
                           "no CPU peak to report. Run with KINETO_LOG_LEVEL=4 to see the profiler's errors.")
    allocated = peak = 0
    for event in events:
        allocated += event.nbytes()
        peak = max(peak, allocated)
    return peak


@contextlib.contextmanager
def default_dtype(dtype):
    """Make the model in its dtype directly: converting it afterwards would hold an fp32 copy too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def make_model(config: GPTConfig, policy: Policy, device):
    with default_dtype(policy.param_dtype), torch.device(device):
        return GPT(config)


def make_optimizer(rule, model, policy: Policy, accumulation: int, release: bool, impl: str):
    """The rule's optimizer on the model, with Tiger's param groups and accumulation where the row has them."""
    options = dict(impl=impl, gradient_release=release, **policy.options())
    params = rule.param_groups(model) if rule.param_groups is not None else model.parameters()
    if rule.folds_gradients:
        options["grad_accum_steps"] = accumulation
    return getattr(optim, rule.name)(params, **options)


def train(rule, policy, accumulation, release, impl, config, batches, device, steps=2):
    """Make the model and optimizer, then ``steps`` optimizer steps of ``accumulation`` micro-batches.
    Rules that fold gradients step on every micro-batch (or inside backward, with release); the others
    accumulate in .grad and step once per optimizer step."""
    model = make_model(config, policy, device)
    if rule.nonnegative_params:  # EG: weights made non-negative, the memory is the same
        with torch.no_grad():
            for param in model.parameters():
                param.abs_()
    optimizer = make_optimizer(rule, model, policy, accumulation, release, impl)
    optimizer.gradient_bytes_at_step = 0  # the most gradient bytes alive when a step begins
    for _ in range(steps):
        for tokens in batches:
            (model(tokens) / accumulation).backward()
            if rule.folds_gradients and not release:
                step(optimizer, model)
        if not rule.folds_gradients:
            step(optimizer, model)
    return model, optimizer


def step(optimizer, model):
    held = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    optimizer.gradient_bytes_at_step = max(optimizer.gradient_bytes_at_step, held)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def backward_peak(config, policy, batches, device, free_gradients: bool) -> int:
    """Peak of one forward and backward beyond the params, with no gradient held before it. Either
    each gradient is freed as autograd makes it (gradient release, or a gradient added into one
    already held): the activations and one gradient in flight. Or the gradients are kept as autograd
    makes them, while the activations are freed: their sum peaks below activations + all gradients."""
    def forward_backward():
        model = make_model(config, policy, device)
        if free_gradients:
            for param in model.parameters():
                param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        model(batches[0]).backward()
        forward_backward.param_bytes = tensor_bytes(model.parameters())

    peak = peak_memory(forward_backward, device)
    return peak - forward_backward.param_bytes


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def state_row(rule, policy_name, params, impl):
    """One optimizer step on ``params``, then the state bytes per param: analytic against measured."""
    policy = POLICIES[policy_name]
    optimizer = getattr(optim, rule.name)(params, impl=impl, **policy.options())
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
        if rule.only_sparse_gradients:  # every row held, as an embedding's gradient (its states are whole anyway)
            param.grad = param.grad.to_sparse(1)
    optimizer.step()
    numel = sum(p.numel() for p in params)
    group = optimizer.param_groups[0]
    analytic = rule.state_bytes(group, [p.numel() for p in params], policy.param_dtype, policy.state_dtype,
                                policy.master_weight_bits)
    measured = tensor_bytes(t for state in optimizer.state.values() for t in state.values()
                            if isinstance(t, torch.Tensor))
    return dict(rule=rule.name, policy=policy_name, states=" ".join(rule.state_names(group)) or "-",
                scalar_states=" ".join(rule.scalar_states) or "-", params=numel,
                analytic_state_bytes_per_param=analytic / numel, measured_state_bytes_per_param=measured / numel,
                analytic_state_bytes=analytic, measured_state_bytes=measured)


def state_rows(policies, device, config):
    """Every rule × policy, on params shaped like the model's (made non-negative where the rule needs it).

    The reference steps: the base class makes the state tensors alike for either impl, and the
    reference does not pay the interpreter's seconds per new kernel specialisation on a CPU."""
    shapes = [p.shape for p in make_model(config, POLICIES["fp32"], "meta").parameters()]
    rows = []
    for rule in tqdm(RULES.values(), desc="state of every rule"):
        for policy_name in policies:
            dtype, state_dtype = POLICIES[policy_name].param_dtype, POLICIES[policy_name].state_dtype
            if dtype not in rule.dtypes or (is_quantized(state_dtype) and not rule.quantized_states):
                continue  # a policy the rule refuses
            torch.manual_seed(0)
            params = [torch.randn(shape, dtype=dtype, device=device) for shape in shapes]
            if rule.nonnegative_params:
                params = [p.abs() for p in params]
            rows.append(state_row(rule, policy_name, params, "reference"))
    for rule in SHAPED_RULES.values():
        if rule.optimizer.NEEDS_CLOSURE:
            continue  # its state fills over many closure evaluations: its model is the full history's
        torch.manual_seed(0)
        params = [p for p in (torch.randn(shape, device=device) for shape in shapes) if rule.takes(p)]
        rows.append(shaped_state_row(rule, params))
    return rows


def shaped_state_row(rule, params):
    """A rule of another shape (optim.rule.SHAPES), fp32, stepped once on the params it takes (Muon: the
    matrices): its declared state bytes against the bytes of its state tensors."""
    optimizer = rule.optimizer(params, impl="reference")
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    optimizer.step()
    numel = sum(p.numel() for p in params)
    analytic = rule.state_bytes(optimizer.param_groups[0], [p.shape for p in params], torch.float32)
    measured = tensor_bytes(t for state in optimizer.state.values() for t in state.values()
                            if isinstance(t, torch.Tensor))
    return dict(rule=rule.name, policy="fp32", states=" ".join(sorted({n for st in optimizer.state.values() for n in st})),
                scalar_states="-", params=numel, analytic_state_bytes_per_param=analytic / numel,
                measured_state_bytes_per_param=measured / numel, analytic_state_bytes=analytic,
                measured_state_bytes=measured)


def held_through_backward(rule, group, grads_held) -> str:
    """What every backward finds allocated, in words: the headline's model."""
    states = len(rule.state_names(group))
    held = "params" + (" + grads" if grads_held else "")
    return held + (f" + {states} state" + ("s" if states > 1 else "") if states else "")


def peak_row(rule, policy_name, accumulation, release, impl, config, tokens, device, backward_peaks):
    policy = POLICIES[policy_name]
    torch.manual_seed(0)
    batches = [torch.randint(0, config.vocab, (1, tokens + 1), device=device) for _ in range(accumulation)]
    trained = []
    measured = peak_memory(lambda: trained.extend(train(rule, policy, accumulation, release, impl, config,
                                                        batches, device)), device)
    model, optimizer = trained
    params = tensor_bytes(model.parameters())
    # Gradients outlive a backward only where they accumulate in .grad across micro-batches; rules
    # that fold gradients take each micro-batch's into their state (and zero_grad, or release, frees it).
    grads_held = params if accumulation > 1 and not rule.folds_gradients else 0
    one_in_flight = release or grads_held > 0
    states = sum(rule.state_bytes(group, [p.numel() for p in group["params"]], policy.param_dtype,
                                  policy.state_dtype, policy.master_weight_bits) for group in optimizer.param_groups)
    backward = backward_peaks[policy_name][one_in_flight]
    analytic = params + grads_held + states + backward
    # Persistent memory: what lives from step to step (θ, its residual, the state) and the gradients
    # alive when a step begins (none under gradient release; all of them otherwise).
    numel = sum(p.numel() for p in model.parameters())
    measured_state = tensor_bytes(t for state in optimizer.state.values() for t in state.values()
                                  if isinstance(t, torch.Tensor))
    gradients_at_step = 0 if release else params
    return dict(rule=rule.name, gradient_release=release, accumulation=accumulation, policy=policy_name,
                impl=impl, tokens_per_micro_batch=tokens,
                held=held_through_backward(rule, optimizer.param_groups[0], grads_held),
                backward="activations + one gradient in flight" if one_in_flight else "activations + gradients made",
                params_bytes=params, grads_bytes=grads_held, state_bytes=states, backward_bytes=backward,
                analytic_peak_bytes=analytic, measured_peak_bytes=measured, difference=measured / analytic - 1,
                analytic_persistent_bytes_per_param=(params + states + gradients_at_step) / numel,
                measured_persistent_bytes_per_param=(params + measured_state + optimizer.gradient_bytes_at_step) / numel,
                persistent_goal=PERSISTENT_GOALS.get((rule.name, release, policy_name)))


def releases(rule, accumulation) -> tuple:
    """Gradient release where the rule takes it: under any accumulation for a rule that folds gradients
    (Tiger), at k = 1 for every other rule whose row allows it (each backward is then one step)."""
    if rule.folds_gradients or (accumulation == 1 and not rule.release_refused):
        return (False, True)
    return (False,)


def peak_rows(rules, policies, accumulations, impl, device, config, tokens):
    backward_peaks = {}
    torch.manual_seed(0)
    # A first forward and backward makes what a process allocates once (a GPU's cuBLAS workspace),
    # so no measurement below counts it.
    backward_peak(config, POLICIES[policies[0]], [torch.randint(0, config.vocab, (1, tokens + 1), device=device)],
                  device, free_gradients=True)
    for name in policies:
        torch.manual_seed(0)
        batch = [torch.randint(0, config.vocab, (1, tokens + 1), device=device)]
        backward_peaks[name] = {free: backward_peak(config, POLICIES[name], batch, device, free)
                                for free in (False, True)}
    cases = [(RULES[name], policy, k, release) for name in rules for policy in policies for k in accumulations
             for release in releases(RULES[name], k)]
    return [peak_row(rule, policy, k, release, impl, config, tokens, device, backward_peaks)
            for rule, policy, k, release in tqdm(cases, desc="training peaks")]


def markdown(facts, state, peaks) -> str:
    mib = lambda key: lambda r: f"{r[key] / MiB:.2f}"  # noqa: E731
    lines = [f"# Memory profile\n\nMeasured on {describe(facts)}.\n",
             "## Optimizer state, bytes per param (analytic: the registry's model; measured: the state tensors)\n",
             markdown_table(state, {
                 "rule": lambda r: r["rule"], "policy": lambda r: r["policy"], "states": lambda r: r["states"],
                 "analytic": lambda r: f"{r['analytic_state_bytes_per_param']:.4f}",
                 "measured": lambda r: f"{r['measured_state_bytes_per_param']:.4f}",
                 "equal": lambda r: "yes" if r["analytic_state_bytes"] == r["measured_state_bytes"] else "**no**"}),
             "\n## Peak of training (two optimizer steps of k micro-batches)\n",
             markdown_table(peaks, {
                 "optimizer": label, "k": lambda r: r["accumulation"], "policy": lambda r: r["policy"],
                 "held through backward": lambda r: r["held"], "params MiB": mib("params_bytes"),
                 "grads held MiB": mib("grads_bytes"), "state MiB": mib("state_bytes"),
                 "backward MiB": lambda r: f"{r['backward_bytes'] / MiB:.2f} ({r['backward']})",
                 "analytic peak MiB": mib("analytic_peak_bytes"), "measured peak MiB": mib("measured_peak_bytes"),
                 "difference": lambda r: f"{r['difference']:+.1%}"}),
             "\nThe analytic peak is params + grads held + state + backward: the first three from the registry "
             "and the dtypes; the backward term measured once per policy, with no optimizer, as the activations "
             "plus either one gradient in flight (gradients freed as made, or added into those held) or the "
             "gradients as autograd makes them (none held before the backward)."]
    lines += ["\n## Persistent training memory, bytes per param\n",
              "What lives from one step to the next (θ, its master residual, the state: codes and scales "
              "counted) and the gradients alive when a step begins; measured: the tensors themselves.\n",
              markdown_table(peaks, {
                  "optimizer": label, "k": lambda r: r["accumulation"], "policy": lambda r: r["policy"],
                  "analytic": lambda r: f"{r['analytic_persistent_bytes_per_param']:.3f}",
                  "measured": lambda r: f"{r['measured_persistent_bytes_per_param']:.3f}",
                  "goal": lambda r: "" if r["persistent_goal"] is None else (
                      f"≤ {r['persistent_goal']:.2f}: " + ("met" if r["measured_persistent_bytes_per_param"]
                                                          <= r["persistent_goal"] else "**not met**"))})]
    off = [r for r in peaks if abs(r["difference"]) > AGREEMENT]
    lines.append(f"\n{len(peaks) - len(off)} of {len(peaks)} measured peaks are within {AGREEMENT:.0%} of the model.")
    if off:
        lines.append("Where they differ: " + "; ".join(
            f"{label(r)}, k={r['accumulation']}, {r['policy']}: {r['difference']:+.1%}" for r in off) + ". "
            "Above the model, the step holds temporaries the model leaves out: the reference computes each "
            "tensor's update in fp32 temporaries (with stochastic rounding, split masters or int8 states, on "
            "fp32 copies of every param and state of a group at once); "
            "on a CPU, Tiger's RMS of a bf16 tensor (torch's norm with dtype=float32) copies it to fp32 first; "
            "on a GPU, the caching allocator rounds each tensor up to 512 bytes.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dense_rules = [name for name, rule in RULES.items() if not rule.only_sparse_gradients]  # the model's gradients
    parser.add_argument("--rules", nargs="+", default=list(HEADLINE_RULES), choices=dense_rules,
                        help="rules whose training peaks are measured (default: %(default)s); every rule's state is")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES), metavar="POLICY",
                        help=f"precision policies (default: all {len(POLICIES)}): " + ", ".join(f'"{name}"' for name in POLICIES))
    parser.add_argument("--accumulation", nargs="+", type=int, default=[1, 4], help="micro-batches per step")
    parser.add_argument("--impl", default="auto", choices=["auto", "triton", "reference"])
    parser.add_argument("--out", help=OUT_HELP)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    facts = machine(device)
    print(f"Memory profile on {describe(facts)}")
    config, tokens = MODELS[device.type]
    state = state_rows(args.policies, device, config)
    peaks = peak_rows(args.rules, args.policies, args.accumulation, args.impl, device, config, tokens)
    directory = report_directory(facts, args.out)
    write_csv(directory / "memory.csv", facts, peaks + state)
    text = markdown(facts, state, peaks)
    (directory / "memory.md").write_text(text)
    notes = []
    if device.type == "cpu":
        params = sum(p.numel() for p in make_model(config, POLICIES["fp32"], "meta").parameters())
        blocks = f"{config.blocks} block" + ("s" if config.blocks > 1 else "")
        notes.append(f"No GPU here: the peaks are torch's CPU allocations (torch.profiler) while training a "
                     f"{params / 1e3:.0f}k-param GPT-2 miniature ({blocks}, {tokens} tokens per micro-batch). "
                     "GPT-2 small's peaks on a GPU (torch.cuda.max_memory_allocated): not measured, needs a GPU.")
    memory_bars(peaks, directory / "memory.png", notes)
    print(text)
    if device.type == "cpu":
        print("No GPU here: the peaks are torch's CPU allocations, which for these training steps are what a GPU "
              "would allocate too (the fused kernel allocates nothing); the GPU's own figures need a GPU run.")
    print(written(directory, ["memory.csv", "memory.md", "memory.png"]))


if __name__ == "__main__":
    os.environ.setdefault("KINETO_LOG_LEVEL", QUIET_KINETO_LOG_LEVEL)  # before the first profile: see above
    main()
