"""The tuned configurations of one GPU: the file format, and the lookup from a launch to its config.

One JSON file per GPU under autotune/tables/, named after the device (``nvidia-h200.json``)::

    {"device": "NVIDIA H200", "capability": [9, 0],
     "tables": {"3.6.0": {"date": ..., "torch": ..., "entries": [
         {"rule": "AdamW", "dtype": "bfloat16", "bucket": 22, "block_size": 2048, "blocks_per_program": 4,
          "num_warps": 4, "num_stages": 1, "ms": 0.071, "default_ms": 0.083}, ...]}}}

A table holds for one triton version (the key): a config compiled by another triton version may
perform differently, so another version falls back to the defaults until it is tuned too. The bucket
of a launch is ⌈log2⌉ of its largest tensor's size; an untuned bucket takes the nearest tuned one.
"""
import json
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from autotune.space import DEFAULT_CONFIGS, LaunchConfig

TABLES = Path(__file__).resolve().parent / "tables"
CONFIG_FIELDS = tuple(LaunchConfig.__dataclass_fields__)


def size_bucket(numel: int) -> int:
    """⌈log2(numel)⌉: tensors of 2^(b−1) + 1 to 2^b elements share bucket b."""
    return max(int(numel) - 1, 0).bit_length()


def device_file(device_name: str) -> Path:
    return TABLES / (re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") + ".json")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class TuningTable:
    """The entries tuned for one device, capability and triton version, indexed for lookup."""

    def __init__(self, entries: list[dict]):
        self.entries = entries
        self._buckets: dict = {}
        for entry in sorted(entries, key=lambda e: e["bucket"]):
            config = LaunchConfig(**{field: int(entry[field]) for field in CONFIG_FIELDS})
            self._buckets.setdefault((entry["rule"], entry["dtype"]), []).append((entry["bucket"], config))

    def lookup(self, rule_name: str, dtype: torch.dtype, numel: int) -> Optional[LaunchConfig]:
        """The config of the nearest tuned bucket (a tie takes the smaller bucket: more programs), or
        None when this rule and dtype were not tuned."""
        tuned = self._buckets.get((rule_name, _dtype_name(dtype)))
        if not tuned:
            return None
        wanted = size_bucket(numel)
        return min(tuned, key=lambda pair: (abs(pair[0] - wanted), pair[0]))[1]

    @classmethod
    def for_device(cls, device_name: str, capability: tuple, triton_version: str,
                   path: Optional[Path] = None) -> Optional["TuningTable"]:
        """The table of this GPU for this triton version, or None (with a warning when the GPU has a
        file but not for this capability or triton version)."""
        path = path or device_file(device_name)
        if not path.exists():
            return None
        stored = read(path)
        if tuple(stored["capability"]) != tuple(capability):
            warnings.warn(f"autotune: {path} was tuned on compute capability {tuple(stored['capability'])}, this "
                          f"{device_name} has {tuple(capability)}: launches take the default configuration; "
                          "run `python -m autotune` to tune this GPU")
            return None
        if triton_version not in stored["tables"]:
            warnings.warn(f"autotune: {path} has tables for triton {sorted(stored['tables'])}, not {triton_version}: "
                          "launches take the default configuration; run `python -m autotune` to tune for it")
            return None
        return cls(stored["tables"][triton_version]["entries"])


def read(path: Path) -> dict:
    with open(path) as file:
        stored = json.load(file)
    for key in ("device", "capability", "tables"):
        if key not in stored:
            raise ValueError(f"{path} is not a tuning table: it lacks {key!r}")
    return stored


def write(path: Path, device_name: str, capability: tuple, triton_version: str, facts: dict,
          entries: list[dict]) -> None:
    """Store ``entries`` as this GPU's table for ``triton_version``, keeping the file's other versions;
    an entry replaces a stored one of the same rule, dtype and bucket."""
    stored = read(path) if path.exists() else {"device": device_name, "capability": list(capability), "tables": {}}
    if tuple(stored["capability"]) != tuple(capability):
        raise ValueError(f"{path} holds capability {tuple(stored['capability'])}, this GPU has {tuple(capability)}; "
                         "write to another file with --out")
    previous = stored["tables"].get(triton_version, {}).get("entries", [])
    key = lambda entry: (entry["rule"], entry["dtype"], entry["bucket"])  # noqa: E731
    merged = {key(entry): entry for entry in previous}
    merged.update({key(entry): entry for entry in entries})
    stored["tables"][triton_version] = {**facts, "entries": sorted(merged.values(), key=key)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        json.dump(stored, file, indent=1)
        file.write("\n")


def entry(rule_name: str, dtype: torch.dtype, bucket: int, config: LaunchConfig, ms: float,
          default_ms: float) -> dict:
    return {"rule": rule_name, "dtype": _dtype_name(dtype), "bucket": bucket, **config.as_dict(),
            "ms": ms, "default_ms": default_ms}


__all__ = ["DEFAULT_CONFIGS", "LaunchConfig", "TuningTable", "device_file", "entry", "read", "size_bucket",
           "write"]
