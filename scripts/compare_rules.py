"""Compare the update rules on a toy model: loss, optimizer-state memory, and step time per impl.

A quick look at four rules training (`python -m scripts.compare_rules`); the measured profiles are
scripts/memory.py and scripts/bandwidth.py (`./dev main`). On a machine without a GPU the Triton
kernels run under the interpreter (TRITON_INTERPRET=1, set by ./dev), so the step times printed
there measure the interpreter, not a GPU: the script says so.
"""
import argparse
import os
import platform
import time

import torch
from tqdm import tqdm

from fusedoptim import optim
from fusedoptim.optim.registry import RULES

# Rules compared, with a learning rate each can train this toy model at (sign rules take smaller ones).
LEARNING_RATES = {"Adam": 1e-2, "AdamW": 1e-2, "Lion": 1e-3, "Tiger": 1e-3}


def toy_problem(seed: int, device: torch.device):
    """A two-layer MLP regressing a fixed random teacher network: small, deterministic, non-convex."""
    torch.manual_seed(seed)
    inputs = torch.randn(512, 32)
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    for p in teacher.parameters():
        p.requires_grad_(False)
    targets = teacher(inputs)
    torch.manual_seed(seed + 1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(device)
    return model, inputs.to(device), targets.to(device)


def train(rule_name: str, impl: str, steps: int, device: torch.device):
    model, inputs, targets = toy_problem(0, device)
    optimizer = getattr(optim, rule_name)(model.parameters(), lr=LEARNING_RATES[rule_name], impl=impl)
    losses, step_seconds = [], []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if isinstance(t, torch.Tensor) and t.dim() > 0)
    n_params = sum(p.numel() for p in model.parameters())
    median_ms = sorted(step_seconds)[len(step_seconds) // 2] * 1e3
    return losses, state_bytes / n_params, median_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="training steps per rule and impl (default 100)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    import triton
    print(f"machine: {machine}; torch {torch.__version__}, triton {triton.__version__}"
          + ("; Triton kernels under the CPU interpreter" if interpreted else ""))
    impls = ["reference", "triton"] if device.type == "cuda" or interpreted else ["reference"]
    rows = []
    for rule_name, impl in tqdm([(r, i) for r in LEARNING_RATES for i in impls], desc="training"):
        losses, state_bytes_per_param, median_ms = train(rule_name, impl, args.steps, device)
        analytic = RULES[rule_name].bytes_per_param(optim.__dict__[rule_name]([torch.zeros(1)]).defaults)
        rows.append((rule_name, impl, losses[0], losses[-1], state_bytes_per_param, analytic, median_ms))
    print(f"\n| rule | impl | loss at step 0 | loss at step {args.steps} | state bytes/param | "
          "bytes moved/param/step (fp32 model) | median step ms |")
    print("|---|---|---|---|---|---|---|")
    for name, impl, first, last, state, analytic, ms in rows:
        print(f"| {name} | {impl} | {first:.4f} | {last:.4f} | {state:.0f} | {analytic} | {ms:.2f} |")
    if interpreted:
        print("\nStep times of impl=triton here are the Triton interpreter's on a CPU, not a GPU's: "
              "bandwidth figures need a GPU.")


if __name__ == "__main__":
    main()
