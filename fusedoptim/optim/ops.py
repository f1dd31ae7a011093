"""The optimizer step as one torch.library custom op, so that torch.compile sees a whole step as one
opaque call with declared mutations instead of tracing into pointer tables and launches.

An eager step does not go through the op: it calls its step directly (no dispatch, no flattening of
its arguments). Under torch.compile the step's traced Python only gathers the params (the tensors the op
mutates, by which the graph orders it) and GradScaler's tensors, and calls ``triton_optim::step``
with them and a key; at run time the op hands them to the step registered under that key, which
checks that they are its own, reads the gradients and hyperparameters, reuses its launch plan (or
builds one, checking everything) and launches. The op's schema holds no rule function and no flag
string: nothing is serialised or parsed per call, and since the graph reads no hyperparameter, no lr,
float or tensor, ever recompiles it.

Why an opaque ``custom_op`` and not ``triton_op``/``wrap_triton``, on a GPU too: a launch reads its
tensors through a table of ``data_ptr()``s built on the host. A triton_op's body is traced with fake
tensors, which have no data pointer, and inductor's mutation analysis follows a kernel's pointer
arguments, not pointers loaded from a table. So inductor could neither build the table nor know what
the kernel writes; the op declares that instead (``mutates_args``), and inductor orders it as a call.
"""
import itertools
import weakref
from typing import Callable, Optional

import torch

# key -> a weak reference to the step that runs it (an optimizer's bound method): the registry keeps no
# optimizer alive, and an optimizer's entry goes with it.
_steps: dict[int, weakref.WeakMethod] = {}
_keys = itertools.count()


def register(step: Callable) -> int:
    """A key for ``step``, a bound method ``(params, inv_scale, found_inf)``, until its object is collected."""
    key = next(_keys)
    _steps[key] = weakref.WeakMethod(step)
    weakref.finalize(step.__self__, _steps.pop, key, None)
    return key


def registered() -> int:
    """How many steps have a key: one per live optimizer (and per copy)."""
    return len(_steps)


@torch.library.custom_op("triton_optim::step", mutates_args=("params",))
def _step_op(key: int, params: list[torch.Tensor], inv_scale: Optional[torch.Tensor],
             found_inf: Optional[torch.Tensor]) -> None:
    step = _steps[key]()
    if step is None:
        raise RuntimeError("the optimizer of this compiled step no longer exists; compile the new one's step")
    step(params, inv_scale, found_inf)


@_step_op.register_fake
def _(*args, **kwargs) -> None:
    return None


def step(key: int, params: list[torch.Tensor], inv_scale: Optional[torch.Tensor] = None,
         found_inf: Optional[torch.Tensor] = None) -> None:
    """The step registered under ``key``, as one op of a compiled graph."""
    _step_op(key, params, inv_scale, found_inf)
