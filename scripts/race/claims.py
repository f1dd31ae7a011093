"""The papers' claims the race can speak to (issue 27, item 3), each decided from the race's numbers.

A claim compares a candidate entry with a baseline entry on each task, by the best validation loss over
the lr grid (the mean over the seeds) and the seeds' spread (half their range), the noise a verdict must
clear:

- "beats": held where the candidate's mean is below the baseline's by more than the larger spread;
- "matches": held where it is at most the baseline's plus the larger spread (as good, or better);
- "a tenth of the lr": "matches", and the candidate's best lr is a tenth of the baseline's within one
  step of the grid (a ratio from 1/30 to 1/3).

"int8 state costs nothing" is held on a task where, for every rule run with int8 state, |int8 − fp32|
is within the larger spread. A claim whose rule is not in the registry is "not testable: <rule> not in
the registry"; one whose runs all diverged or were refused is not testable at this size.
"""
import math
from typing import NamedTuple

HELD, NOT_HELD = "held", "not held"


class Claim(NamedTuple):
    text: str
    candidate: str  # an entry of the race
    baseline: str
    test: str  # "beats", "matches" or "a tenth of the lr"
    large_batch: bool = False  # on LARGE_BATCH's variant of its task instead of the tasks themselves


CLAIMS = (
    Claim("AdEMAMix reaches a lower loss than AdamW (Pagliardini et al. 2024)", "AdEMAMix", "AdamW", "beats"),
    Claim("Schedule-Free AdamW, no schedule, matches AdamW with cosine decay (Defazio et al. 2024)",
          "ScheduleFreeAdamW", "AdamW + cosine", "matches"),
    Claim("Lion matches AdamW at about a tenth of its lr (Chen et al. 2023)", "Lion", "AdamW", "a tenth of the lr"),
    Claim("Tiger matches AdamW at about a tenth of its lr (Su 2023)", "Tiger", "AdamW", "a tenth of the lr"),
    Claim("LAMB matches AdamW at a large batch (You et al. 2019)", "LAMB", "AdamW", "matches", large_batch=True),
)
INT8_CLAIM = "int8 state costs nothing: |int8 − fp32| within the seeds' spread (Dettmers et al. 2022)"
SCHEDULED = (("AdamW", "cosine"),)  # the scheduled baselines the claims ask the race to enter
# The large-batch variant: this task with 8× its batch for an eighth of the steps (the same examples),
# run by LAMB's claim's two entries only.
LARGE_BATCH = dict(task="mlp", factor=8, entries=("LAMB", "AdamW"))
TENTH = (1 / 30 * 0.999, 1 / 3 * 1.001)  # one grid step (about 3×) either side of 1/10, with rounding room


def compare(test: str, candidate: dict, baseline: dict) -> tuple:
    """(verdict, numbers) of ``candidate`` against ``baseline``: each {"loss", "spread", "lr"}."""
    noise = max(candidate["spread"], baseline["spread"])
    numbers = (f"{candidate['loss']:.4f} ± {candidate['spread']:.4f} (lr {candidate['lr']:g}) against "
               f"{baseline['loss']:.4f} ± {baseline['spread']:.4f} (lr {baseline['lr']:g})")
    if test == "beats":
        return (HELD if candidate["loss"] < baseline["loss"] - noise else NOT_HELD), numbers
    held = candidate["loss"] <= baseline["loss"] + noise
    if test == "a tenth of the lr":
        ratio = candidate["lr"] / baseline["lr"]
        numbers += f"; lr ratio {ratio:.3g}"
        held = held and TENTH[0] <= ratio <= TENTH[1]
    return (HELD if held else NOT_HELD), numbers


def judge(summaries: dict, registry: set, tasks: list, large_batch_task: str = None) -> list:
    """Each claim's verdict per task. ``summaries``: (entry, task, precision) -> {"loss", "spread", "lr"};
    ``registry``: the names of the registry's rules; ``tasks``: the tasks run."""
    verdicts = []
    for claim in CLAIMS:
        rows = [name.split(" + ")[0] for name in (claim.candidate, claim.baseline)]
        missing = [name for name in rows if name not in registry]
        for task in ([large_batch_task] if claim.large_batch else tasks):
            if missing:
                verdict, numbers = f"not testable: {', '.join(missing)} not in the registry", ""
            else:
                pair = [summaries.get((name, task, "fp32")) for name in (claim.candidate, claim.baseline)]
                if None in pair:
                    verdict, numbers = "not testable: not run (narrowed by --rules or --tasks)", ""
                elif not all(math.isfinite(side["loss"]) for side in pair):
                    verdict, numbers = "not testable at this size: a side diverged or was refused at every lr", ""
                else:
                    verdict, numbers = compare(claim.test, *pair)
            verdicts.append(dict(claim=claim.text, task=task, verdict=verdict, numbers=numbers))
    for task in tasks:
        verdicts.append(dict(claim=INT8_CLAIM, task=task, **int8_verdict(summaries, task)))
    return verdicts


def int8_verdict(summaries: dict, task: str) -> dict:
    differences = []
    for (entry, where, precision), quantized in summaries.items():
        full = summaries.get((entry, where, "fp32"))
        if where == task and precision == "int8" and full and math.isfinite(quantized["loss"]) \
                and math.isfinite(full["loss"]):
            noise = max(full["spread"], quantized["spread"])
            differences.append((abs(quantized["loss"] - full["loss"]) - noise, entry,
                                quantized["loss"] - full["loss"], noise))
    if not differences:
        return dict(verdict="not testable at this size: no rule ran with int8 state", numbers="")
    outside = sorted(difference for difference in differences if difference[0] > 0)
    worst = max(differences)
    numbers = (f"{len(differences) - len(outside)} of {len(differences)} rules within; the worst {worst[1]}: "
               f"{worst[2]:+.4f} against a spread of {worst[3]:.4f}")
    return dict(verdict=HELD if not outside else NOT_HELD, numbers=numbers)
