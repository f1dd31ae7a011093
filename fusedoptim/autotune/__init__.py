"""The one place where a kernel's launch configuration is chosen.

``launch_config`` looks the configuration up in the table tuned for this GPU (fusedoptim/autotune/tables/, one file
per GPU, written by ``python -m fusedoptim.tuner``): the rule, the storage dtype and the size bucket of the
launch's largest tensor, the nearest tuned bucket when that one was not tuned, and the default
configuration when the GPU, its compute capability or the triton version has no table.

Under the Triton interpreter nothing is ever benchmarked (there is no device to time): the
interpreter configuration follows the tensor size alone, small enough that test tensors of a few
thousand elements still span several chunks, so the chunk map and the masked tail are exercised.
"""
import contextlib
import functools
import warnings
from typing import Optional

import torch
import triton

from fusedoptim.autotune.space import DEFAULT_CONFIGS, LaunchConfig
from fusedoptim.autotune.table import MalformedTable, TuningTable, size_bucket

__all__ = ["DEFAULT_CONFIGS", "LaunchConfig", "default_config", "device_table", "forced_config", "forced_now",
           "interpreter_config", "launch_config", "size_bucket"]

_forced: Optional[tuple] = None  # (config, dtype or None), set by forced_config while the tuner times a candidate


def interpreter_config(numel: int) -> LaunchConfig:
    """Under the interpreter each program costs Python time per operation whatever its width, so a
    large tensor takes wide blocks: an Adam step on 327,680 fp32 elements took 6 s in blocks of 1024
    and 0.17 s in blocks of 65536. A tensor spans about four blocks, and tensors up to 4096 elements
    keep blocks of 1024, so tests of a few thousand elements still span several chunks."""
    block_size = min(65536, max(1024, triton.next_power_of_2(numel) // 4))
    return LaunchConfig(block_size=block_size, blocks_per_program=1, num_warps=1, num_stages=1)


def default_config(dtype: torch.dtype) -> LaunchConfig:
    return DEFAULT_CONFIGS[dtype.itemsize]


@contextlib.contextmanager
def forced_config(config: LaunchConfig, dtype: Optional[torch.dtype] = None):
    """Every launch inside (of storage ``dtype``, if given) takes ``config``: how the tuner times one
    candidate."""
    global _forced
    previous, _forced = _forced, (config, dtype)
    try:
        yield
    finally:
        _forced = previous


def forced_now() -> Optional[LaunchConfig]:
    """The configuration ``forced_config`` imposes at this moment (the candidate being timed), or None."""
    return None if _forced is None else _forced[0]


@functools.lru_cache(maxsize=None)
def device_table(device_index: int) -> Optional[TuningTable]:
    """This GPU's table for the running triton, or None (read once per device, so a malformed file warns
    once per device; ``device_table.cache_clear()`` reads the files again)."""
    name = torch.cuda.get_device_name(device_index)
    capability = torch.cuda.get_device_capability(device_index)
    try:
        return TuningTable.for_device(name, capability, triton.__version__)
    except MalformedTable as error:
        warnings.warn(f"autotune: {error}. Launches on this {name} take the default configuration: fix the file "
                      "there, or delete it and re-run `python -m fusedoptim.tuner` to tune this GPU again")
        return None


def launch_config(rule_name: str, dtype: torch.dtype, numel: int, device: torch.device) -> LaunchConfig:
    """The launch configuration for one rule, storage dtype and largest tensor size on ``device``.

    Kernels meet CPU tensors only under the interpreter, so the device alone tells the two apart.
    A malformed table file warns (once per device, naming the file and the field) and every launch takes
    the default configuration: a table changes only speed, never numerics, so it must not fail the step."""
    if _forced is not None and _forced[1] in (None, dtype):
        return _forced[0]
    if device.type == "cpu":
        return interpreter_config(numel)
    table = device_table(device.index if device.index is not None else torch.cuda.current_device())
    tuned = table.lookup(rule_name, dtype, numel) if table is not None else None
    return tuned or default_config(dtype)
