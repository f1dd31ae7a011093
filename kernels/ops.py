"""The launcher behind torch.library custom ops, so that torch.compile sees each launch as one opaque
call with declared mutations instead of tracing into data_ptr()s and the pointer table.

``update`` and ``reduce`` take what ``multi_tensor_update`` and ``multi_tensor_reduce`` take; they
flatten it into the types an op schema allows (tensor lists, numbers, strings) and the op rebuilds it.
The rule's math is named by its module and name; hyperparameters are numbers or 0-d tensors (a
tensor lr changes without recompiling); the compile-time flags travel as their repr.

Why an opaque ``custom_op`` and not ``triton_op``/``wrap_triton``, on a GPU too: a launch reads its
tensors through a table of ``data_ptr()``s built on the host. A triton_op's body is traced with fake
tensors, which have no data pointer, and inductor's mutation analysis follows a kernel's pointer
arguments, not pointers loaded from a table. So inductor could neither build the table nor know what
the kernel writes; the op declares that instead (``mutates_args``), and inductor orders it as a call.
"""
import ast
import functools
import importlib
from typing import Optional, Sequence

import torch

from kernels.launcher import TensorSlots, multi_tensor_reduce, multi_tensor_update


# The flags of a rule's launch repeat from step to step: each string is parsed once, not per step.
_literal = functools.lru_cache(maxsize=1024)(ast.literal_eval)


def _name(function) -> str:
    python_function = getattr(function, "fn", function)  # a @triton.jit function wraps the Python one
    return f"{python_function.__module__}:{python_function.__name__}"


def _function(name: str):
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


def _flatten(slots: Sequence[TensorSlots], hyper: tuple) -> dict:
    return dict(
        params=[s.param for s in slots], grads=[s.grad for s in slots],
        states=[t for s in slots for t in s.states], scalars=[t for s in slots for t in s.scalars],
        counts=[n for s in slots for n in (len(s.states), len(s.scalars), s.row_length)],
        tensor_flags=repr([s.flags for s in slots]),
        hyper_numbers=[0.0 if isinstance(h, torch.Tensor) else float(h) for h in hyper],
        hyper_tensors=[h for h in hyper if isinstance(h, torch.Tensor)],
        hyper_is_tensor=[isinstance(h, torch.Tensor) for h in hyper],
    )


def _slots(params, grads, states, scalars, counts, tensor_flags) -> list:
    slots, state_at, scalar_at = [], 0, 0
    for i, flags in enumerate(_literal(tensor_flags)):
        n_states, n_scalars, row_length = counts[3 * i: 3 * i + 3]
        slots.append(TensorSlots(params[i], grads[i], tuple(states[state_at: state_at + n_states]),
                                 tuple(scalars[scalar_at: scalar_at + n_scalars]), tuple(flags), row_length))
        state_at, scalar_at = state_at + n_states, scalar_at + n_scalars
    return slots


def _hyper(numbers, tensors, is_tensor) -> tuple:
    tensors = iter(tensors)
    return tuple(next(tensors) if flag else number for number, flag in zip(numbers, is_tensor))


def _amp(inv_scale, found_inf):
    return None if inv_scale is None else (inv_scale, found_inf)


@torch.library.custom_op("triton_optim::update", mutates_args=("params", "states", "seeds"))
def _update_op(function: str, rule_name: str, params: list[torch.Tensor], grads: list[torch.Tensor],
               states: list[torch.Tensor], scalars: list[torch.Tensor], counts: list[int], tensor_flags: str,
               hyper_numbers: list[float], hyper_tensors: list[torch.Tensor], hyper_is_tensor: list[bool],
               flags: str, seeds: list[torch.Tensor], inv_scale: Optional[torch.Tensor],
               found_inf: Optional[torch.Tensor]) -> None:
    multi_tensor_update(_function(function), _slots(params, grads, states, scalars, counts, tensor_flags),
                        _hyper(hyper_numbers, hyper_tensors, hyper_is_tensor), _literal(flags), rule_name,
                        {seed.device: seed for seed in seeds} if seeds else None, _amp(inv_scale, found_inf))


@_update_op.register_fake
def _(*args, **kwargs) -> None:
    return None


@torch.library.custom_op("triton_optim::reduce", mutates_args=("out",))
def _reduce_op(function: str, rule_name: str, params: list[torch.Tensor], grads: list[torch.Tensor],
               states: list[torch.Tensor], scalars: list[torch.Tensor], counts: list[int], tensor_flags: str,
               hyper_numbers: list[float], hyper_tensors: list[torch.Tensor], hyper_is_tensor: list[bool],
               flags: str, out: torch.Tensor, inv_scale: Optional[torch.Tensor],
               found_inf: Optional[torch.Tensor]) -> None:
    multi_tensor_reduce(_function(function), _slots(params, grads, states, scalars, counts, tensor_flags),
                        _hyper(hyper_numbers, hyper_tensors, hyper_is_tensor), _literal(flags), rule_name,
                        out, _amp(inv_scale, found_inf))


@_reduce_op.register_fake
def _(*args, **kwargs) -> None:
    return None


def update(function, slots: Sequence[TensorSlots], hyper: tuple, flags: tuple, rule_name: str,
           seeds: Optional[dict] = None, amp: Optional[tuple] = None) -> None:
    """kernels.multi_tensor_update through the op: the same arguments, the same effect."""
    inv_scale, found_inf = amp if amp is not None else (None, None)
    _update_op(_name(function), rule_name, **_flatten(slots, hyper), flags=repr(tuple(flags)),
               seeds=list((seeds or {}).values()), inv_scale=inv_scale, found_inf=found_inf)


def reduce(function, slots: Sequence[TensorSlots], hyper: tuple, flags: tuple, rule_name: str, out: torch.Tensor,
           amp: Optional[tuple] = None) -> None:
    """kernels.multi_tensor_reduce through the op: the same arguments, the same effect."""
    inv_scale, found_inf = amp if amp is not None else (None, None)
    _reduce_op(_name(function), rule_name, **_flatten(slots, hyper), flags=repr(tuple(flags)), out=out,
               inv_scale=inv_scale, found_inf=found_inf)
