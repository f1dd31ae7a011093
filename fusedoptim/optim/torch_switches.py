"""torch.optim's implementation switches — ``foreach``, ``fused``, ``capturable``, ``differentiable`` —
accepted so that code written for torch.optim runs unchanged. Here one option, ``impl``, chooses the
implementation, and what each switch means follows from that (docs/compile-and-cuda-graphs.md):

- ``fused=True`` asks for the fused kernel: impl="triton" (with an explicit impl="reference" it is
  refused); ``fused=False`` or None leaves ``impl`` as it is.
- ``foreach`` changes nothing: the fused step is one multi-tensor launch per group whatever it says,
  and the reference is the oracle's per-tensor loop.
- ``capturable`` changes nothing: the fused step keeps its step count on the device and can always be
  captured into a CUDA graph.
- ``differentiable=True`` is refused: neither impl records an autograd graph through the step.

Where the rule has a torch twin, the switches are checked as the twin checks them, so that the swap
changes no behaviour: one it does not take is a TypeError (SparseAdam takes none; ASGD, no fused),
and a combination it refuses is refused with its error (torch's Adam: a tensor lr with foreach=True
and capturable=False). The switches are never stored in the param groups, not even from a torch checkpoint.
"""
import inspect

import torch

SWITCHES = ("foreach", "fused", "capturable", "differentiable")


def impl_from_switches(rule, switches: dict, hyperparameters: dict, impl: str) -> str:
    """The impl to run, given torch's switches that the caller passed; raises as torch would, or for
    what cannot be honoured here."""
    if rule.torch_twin is not None:
        unknown = [name for name in switches if name not in inspect.signature(rule.torch_twin).parameters]
        if unknown:  # torch's own words, for code that would have failed on the twin too
            raise TypeError(f"{rule.name}.__init__() got an unexpected keyword argument {unknown[0]!r}: "
                            f"torch.optim.{rule.torch_twin.__name__} has no such switch; here impl= (one of "
                            f"{('auto', *rule.impls)}) chooses the implementation")
    if switches.get("differentiable"):
        raise ValueError(f"{rule.name}: differentiable=True asks for an autograd graph through the step, which "
                         "neither the fused kernel nor the reference records; use "
                         f"{'torch.optim.' + rule.torch_twin.__name__ if rule.torch_twin else 'a torch.optim class'} "
                         "for a differentiable step")
    if rule.torch_twin is not None and ("foreach" in switches or "capturable" in switches):
        probe = {name: switches[name] for name in ("foreach", "capturable") if name in switches}
        # the hyperparameters the twin has too: ours beyond them (cautious) are none of its checks' business
        taken = inspect.signature(rule.torch_twin).parameters
        shared = {name: value for name, value in hyperparameters.items() if name in taken}
        try:  # the twin's own checks of this combination, on a stand-in param: nothing of ours is touched
            rule.torch_twin([torch.zeros(1)], **shared, **probe)
        except (ValueError, RuntimeError, TypeError) as error:
            raise type(error)(f"{rule.name}: {error} (torch.optim.{rule.torch_twin.__name__} refuses it too)") from None
    if switches.get("fused"):
        if impl == "reference":
            raise ValueError(f"{rule.name}: fused=True asks for the fused kernel, and impl='reference' for the "
                             "oracle; pass one of them")
        return "triton"
    return impl


def drop_switches(groups: list) -> None:
    """torch's switches out of these dicts (a torch checkpoint brings them): they would mean nothing here."""
    for group in groups:
        for name in SWITCHES:
            group.pop(name, None)
