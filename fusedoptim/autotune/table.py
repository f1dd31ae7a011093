"""The tuned configurations of one GPU: the file format, and the lookup from a launch to its config.

One JSON file per GPU under fusedoptim/autotune/tables/, named after the device (``nvidia-h200.json``)::

    {"device": "NVIDIA H200", "capability": [9, 0],
     "tables": {"3.6.0": {"date": ..., "torch": ..., "entries": [
         {"rule": "AdamW", "dtype": "bfloat16", "bucket": 22, "block_size": 2048, "blocks_per_program": 4,
          "num_warps": 4, "num_stages": 1, "ms": 0.071, "default_ms": 0.083}, ...]}}}

A table holds for one triton version (the key): a config compiled by another triton version may
perform differently, so another version falls back to the defaults until it is tuned too. The bucket
of a launch is ⌈log2⌉ of its largest tensor's size; an untuned bucket takes the nearest tuned one.

A malformed file (not JSON, a field missing or of the wrong type: ``read`` checks every field) raises
``MalformedTable``, a ValueError naming the file and the field. A table only changes speed, never
numerics, so a launch that meets one warns once per GPU and takes the default configuration
(autotune.device_table) instead of failing the optimizer's step; ``write`` raises instead, and leaves the file
as it is, since it cannot merge into a file it cannot read.
"""
import json
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from fusedoptim.autotune.space import DEFAULT_CONFIGS, LaunchConfig

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
        file but not for this capability or triton version). Raises MalformedTable for a malformed file."""
        path = path or device_file(device_name)
        if not path.exists():
            return None
        stored = read(path)
        if tuple(stored["capability"]) != tuple(capability):
            warnings.warn(f"autotune: {path} was tuned on compute capability {tuple(stored['capability'])}, this "
                          f"{device_name} has {tuple(capability)}: launches take the default configuration; "
                          "run `python -m fusedoptim.tuner` to tune this GPU")
            return None
        if triton_version not in stored["tables"]:
            warnings.warn(f"autotune: {path} has tables for triton {sorted(stored['tables'])}, not {triton_version}: "
                          "launches take the default configuration; run `python -m fusedoptim.tuner` to tune for it")
            return None
        return cls(stored["tables"][triton_version]["entries"])


class MalformedTable(ValueError):
    """A table file that is not JSON or not in the format above; the message names the file and the field."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true would pass as 1


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# (accepts, what it must be) per field. default_ms is null when the default config was not timed
# (tune_optimizer over candidates without it).
_STRING = (lambda value: isinstance(value, str), "a string")
_OBJECT = (lambda value: isinstance(value, dict), "an object")
_LIST = (lambda value: isinstance(value, list), "a list")
_CAPABILITY = (lambda value: isinstance(value, list) and len(value) == 2 and all(map(_is_int, value)),
               "a list of 2 integers")
_BUCKET = (lambda value: _is_int(value) and value >= 0, "a non-negative integer")
_POSITIVE_INT = (lambda value: _is_int(value) and value > 0, "a positive integer")
_NUMBER = (_is_number, "a number")
_NUMBER_OR_NULL = (lambda value: value is None or _is_number(value), "a number or null")

FILE_FIELDS = {"device": _STRING, "capability": _CAPABILITY, "tables": _OBJECT}
TABLE_FIELDS = {"entries": _LIST}
ENTRY_FIELDS = {"rule": _STRING, "dtype": _STRING, "bucket": _BUCKET,
                **{field: _POSITIVE_INT for field in CONFIG_FIELDS}, "ms": _NUMBER, "default_ms": _NUMBER_OR_NULL}


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(path: Path, where: str, value, kind: tuple) -> None:
    accepts, expected = kind
    if not accepts(value):
        raise MalformedTable(f"{path}: {where} must be {expected}, got {_shown(value)}")


def _check_fields(path: Path, where: str, obj, fields: dict) -> None:
    """``obj`` (at ``where``, "" for the top level) is an object holding each of ``fields`` of its kind."""
    _check(path, where or "the top level", obj, _OBJECT)
    prefix = where + "." if where else ""
    for name, kind in fields.items():
        if name not in obj:
            raise MalformedTable(f"{path}: {prefix}{name} is missing")
        _check(path, prefix + name, obj[name], kind)


def _validate(path: Path, stored) -> None:
    _check_fields(path, "", stored, FILE_FIELDS)
    for version, table in stored["tables"].items():
        where = f"tables[{json.dumps(version)}]"
        _check_fields(path, where, table, TABLE_FIELDS)
        for index, stored_entry in enumerate(table["entries"]):
            _check_fields(path, f"{where}.entries[{index}]", stored_entry, ENTRY_FIELDS)


def read(path: Path) -> dict:
    """The stored file, every field checked: MalformedTable names the file and the first bad field."""
    try:
        stored = json.loads(path.read_bytes())
    except json.JSONDecodeError as error:
        raise MalformedTable(f"{path}: not valid JSON: {error.msg} at line {error.lineno}, "
                             f"column {error.colno}") from None
    except UnicodeDecodeError as error:
        raise MalformedTable(f"{path}: not valid JSON: not UTF-8 text at byte {error.start}") from None
    _validate(path, stored)
    return stored


def write(path: Path, device_name: str, capability: tuple, triton_version: str, facts: dict,
          entries: list[dict]) -> None:
    """Store ``entries`` as this GPU's table for ``triton_version``, keeping the file's other versions;
    an entry replaces a stored one of the same rule, dtype and bucket. A malformed file raises
    MalformedTable and is left as it is: its other versions cannot be kept from a file that cannot be read."""
    stored = _read_to_merge(path) if path.exists() else {"device": device_name, "capability": list(capability),
                                                           "tables": {}}
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


def _read_to_merge(path: Path) -> dict:
    try:
        return read(path)
    except MalformedTable as error:
        raise MalformedTable(f"{error}; the file was not overwritten: fix it there, delete it, or write to "
                             "another file with --out") from None


def entry(rule_name: str, dtype: torch.dtype, bucket: int, config: LaunchConfig, ms: float,
          default_ms: Optional[float]) -> dict:
    return {"rule": rule_name, "dtype": _dtype_name(dtype), "bucket": bucket, **config.as_dict(),
            "ms": ms, "default_ms": default_ms}


__all__ = ["DEFAULT_CONFIGS", "LaunchConfig", "MalformedTable", "TuningTable", "device_file", "entry", "read",
           "size_bucket", "write"]
