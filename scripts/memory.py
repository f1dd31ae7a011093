"""Peak memory of a training step, and what gradient release saves with Tiger's built-in accumulation.

`peak_memory(fn, device)` is the bytes allocated at the peak of `fn()` beyond what was allocated
before it: on a GPU torch.cuda's peak counter; on the CPU, the allocation and free events that
torch.profiler records (profile_memory=True), added up in time order.

Run: `python scripts/memory.py [--width 512] [--depth 4] [--accumulation 4]` prints, for Tiger with
accumulation, the peak of one optimizer step (all its micro-batches) with and without
gradient_release, next to the size of the params' gradients, and says on what machine it measured.
"""
import argparse
import platform

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile


def peak_memory(fn, device: torch.device) -> int:
    """Bytes allocated at the peak of ``fn()``, beyond those allocated when it starts."""
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
    allocated = peak = 0
    for event in events:
        allocated += event.nbytes()
        peak = max(peak, allocated)
    return peak


def gradient_release_peaks(width=512, depth=4, accumulation=4, batch=8, device=torch.device("cpu"), impl="auto"):
    """Peak bytes of one optimizer step of Tiger (``accumulation`` micro-batches), without and with
    gradient release, and the bytes of the params' gradients; the state exists before measuring."""
    import optim

    peaks = {}
    for release in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)]).to(device)
        tiger = optim.Tiger(model.parameters(), grad_accum_steps=accumulation, impl=impl, gradient_release=release)
        batches = [torch.randn(batch, width, device=device) for _ in range(accumulation)]

        def optimizer_step():
            for inputs in batches:
                model(inputs).square().mean().backward()  # with release: each grad is applied, then freed
                if not release:
                    tiger.step()
                    tiger.zero_grad(set_to_none=True)

        optimizer_step()  # the state (m) is made before the measurement
        peaks[release] = peak_memory(optimizer_step, device)
    gradient_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return peaks[False], peaks[True], gradient_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    without, with_release, gradients = gradient_release_peaks(args.width, args.depth, args.accumulation, device=device)
    print(f"Tiger, {args.depth} × Linear({args.width}, {args.width}), {args.accumulation} micro-batches per step, "
          f"on {where}, torch {torch.__version__}")
    print(f"{'':>28} {'peak MiB':>10}")
    print(f"{'gradients of the params':>28} {gradients / 2**20:>10.2f}")
    print(f"{'step, gradients kept':>28} {without / 2**20:>10.2f}")
    print(f"{'step, gradient_release=True':>28} {with_release / 2**20:>10.2f}")
    print(f"saved: {(without - with_release) / 2**20:.2f} MiB ({(without - with_release) / gradients:.0%} of the gradients)")


if __name__ == "__main__":
    main()
