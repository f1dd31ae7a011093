"""The launch plan of a step: everything a step checks and builds once, then reuses.

A plan is built when something changed, with every check, before any tensor is modified: each group's
hyperparameters; each param's gradient and every existing state against the param (shape, dtype,
device, layout); which impl runs each group; the kernel arguments; the launches (their pointer tables
and program maps already on the device, their launch configurations). Then it makes what the step
needs (missing states, the scalar states packed into one buffer per group, a rule's sums).

A later step does only what must be done each time (``StepPlan.refresh``): check cheaply that nothing
else changed — the same groups and param lists, the same state tensors, the params still at their
addresses (``p.data = ...`` moves them), the same compile-time flags — check the gradients (after
``zero_grad(set_to_none=True)`` each is a new tensor: its shape, strides, dtype and device against its
param, then its address into the tables), check the hyperparameters that changed (a tensor's shape,
dtype and device, never its value: no host sync), and launch. Anything else that changed rebuilds the
plan, with every check.

Two of its parts have modules of their own: the states' checks and making (``optim.states``), and the
choice of impl with the CUDA-graph checks (``optim.impl``).
"""
import operator
import weakref
from itertools import chain, repeat
from typing import Optional

import torch
from torch.distributed.tensor import DTensor

from fusedoptim.kernels import launcher
from fusedoptim.kernels.launcher import prepare_launches
from fusedoptim.kernels.slots import QuantizedStates, TensorSlots
from fusedoptim.optim.shards import Shards, flat_offset, local
from fusedoptim.optim.impl import check_capturable, real_view, resolve_impl
from fusedoptim.optim.modes import check_mode
from fusedoptim.optim.quantization import COUNT_KEY, FORMATS, STOCHASTIC, UNSIGNED, is_quantized, scale_name
from fusedoptim.optim.rule import FIRST_STEP
from fusedoptim.optim.scalar_updates import advance
from fusedoptim.optim.sums import lay_out
from fusedoptim.optim.states import (MASTER_RESIDUAL, check_states, local_states, make_float_states, make_quantization_count,
                          make_quantized_states, make_residual, pack_scalar_states)
from fusedoptim.optim.validation import check_grad, check_hyperparameters, check_master_param
from fusedoptim.optim.whole import WholeParams

_grad = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_is = operator.is_


def same_objects(values, expected) -> bool:
    """Whether two sequences hold the very same objects (identity, element by element, in C)."""
    return len(values) == len(expected) and all(map(_is, values, expected))


def _states_of(state_dicts, names) -> list:
    """The tensors ``names`` of each state dict, flattened in order (KeyError if one is missing)."""
    if not names:
        return []
    getter = operator.itemgetter(*names)
    return list(map(getter, state_dicts)) if len(names) == 1 else list(chain.from_iterable(map(getter, state_dicts)))


def where(group: dict, group_index: int, position: int) -> str:
    """How an error names a param: its index in its group, and its name if named_parameters gave one."""
    text = f"param {position} of param group {group_index}"
    names = group.get("param_names")
    return f"{text} ('{names[position]}')" if names is not None and position < len(names) else text


class GroupPlan:
    """One param group's part of a step: its checked params (those with a gradient, or the one param a
    gradient release steps), its impl, and for the fused impl its launches."""

    def __init__(self, optimizer, group_index: int, only: Optional[torch.Tensor] = None):
        rule = optimizer.rule
        self.rule, self.index = rule, group_index
        self.group = group = optimizer.param_groups[group_index]
        self.params_list = group["params"]
        if only is None:
            self.all_params, positions = list(self.params_list), range(len(self.params_list))
        else:
            self.all_params, positions = [only], [next(i for i, p in enumerate(self.params_list) if p is only)]
        if only is None and len(set(map(id, self.params_list))) != len(self.params_list):
            first = next(i for i, p in enumerate(self.params_list) if any(p is q for q in self.params_list[:i]))
            raise ValueError(f"{rule.name}: param group {group_index} holds one tensor twice (again at position "
                             f"{first}); torch.optim warns and applies its update twice, which counts its step "
                             "twice: give each param once")
        self.has_grad = [p.grad is not None for p in self.all_params]
        self.params = [p for p, has in zip(self.all_params, self.has_grad) if has]
        self.names = [where(group, group_index, i) for i, has in zip(positions, self.has_grad) if has]
        self.hyper_names = tuple(rule.defaults)
        check_mode(rule, group, f"param group {group_index}")
        check_hyperparameters(rule, group, f"param group {group_index}", host_values_only=True)
        self.hyper_values = list(map(group.__getitem__, self.hyper_names))
        self.master_weight_bits = optimizer.master_weight_bits
        self.master_names = () if self.master_weight_bits is None else (MASTER_RESIDUAL,)
        for param, name in zip(self.params, self.names):
            check_grad(rule, param, name, group)
            if self.master_weight_bits is not None:
                check_master_param(rule, param, name, self.master_weight_bits)
        # FSDP2 params with quantized states in blocks that would straddle shards: stepped whole (optim.whole).
        self.wholes = WholeParams(self.params, optimizer.state_dtype)
        # What each param's states are laid out as: its whole buffer where it is stepped whole, else itself.
        self.stepped = self.wholes.stepped(self.params)
        self.locals = [local(p) for p in self.stepped]  # as they are: their states are made like them
        # Where each local shard starts in its param: keys the codes' random draws (0 for a whole tensor).
        self.firsts = [flat_offset(p) or 0 for p in self.stepped]
        self.complex = any(p.is_complex() for p in self.locals)
        # Until the step runs; between steps only weak references, which keep no gradient alive.
        self.grads = self.wholes.substitute([local(p.grad) for p in self.params], self.wholes.grads)
        self.shards = Shards.of(self.stepped, f"{rule.name}'s param group {group_index}")
        self.sharded = any(isinstance(p, DTensor) for p in self.params)
        self.state_names = rule.state_names(group)
        self.plan_options = [group[key] for key in rule.plan_keys]
        self.state_dtype = optimizer.state_dtype
        # Quantized states: each state's kind (its scheme), in the kernel's order; {} for float states.
        self.kinds = ({spec.name: spec.kind for spec in rule.states if spec.name in self.state_names}
                      if is_quantized(self.state_dtype) else {})
        self.tracked_names = (*rule.scalar_states, *self.state_names, *map(scale_name, self.kinds), *self.master_names)
        existing = [optimizer.state[p] if p in optimizer.state else {} for p in self.params]
        for param, state, name in zip(self.stepped, existing, self.names):
            check_states(rule, self.group, param, state, name, self.state_dtype, self.master_weight_bits)
        existing = list(map(local_states, existing)) if self.sharded else existing
        self.impl = resolve_impl(self, optimizer.impl, existing)
        # What the step runs on: complex tensors as real views, sparse gradients (reference only) dense,
        # except for a rule that updates only the entries they hold.
        self.views = list(map(real_view, self.locals)) if self.complex else self.locals
        self.sparse = any(g.is_sparse for g in self.grads)
        self.grads = [real_view(g.to_dense() if g.is_sparse and not rule.only_sparse_gradients else g)
                      for g in self.grads]
        if self.shards is not None and self.impl == "reference" and rule.sums_for(group):
            raise RuntimeError(f"{rule.name}: the reference reduces over whole tensors, which FSDP2 params are not; "
                               "use impl='triton' (on the CPU, with TRITON_INTERPRET=1), whose step sums those "
                               "reductions over the shards")
        if self.impl == "triton":
            rule.kernel_arguments(group)  # raises here, before any change, if the group cannot be launched
        self.makes_first_step_states = any(
            spec.name not in state for spec in rule.states if spec.initial == FIRST_STEP and spec.exists(group)
            for state in existing)
        if self.params and launcher.capturing(self.locals[0].device):
            check_capturable(self, existing)

    def make(self, optimizer) -> None:
        """What the step needs and the checks did not make: missing states, the packed scalar states,
        the rule's set-up, the launches. Called only after every group of the step was checked."""
        rule = self.rule
        self.state_dicts = [optimizer.state[p] for p in self.params]
        self.first_step = []
        if self.kinds and self.params:
            make_quantization_count(self.group, optimizer.seed, self.locals[0].device)
        for param, state in zip(self.stepped, self.state_dicts):
            for name in rule.scalar_states:  # plain tensors on an FSDP2 param's device too, as torch.optim's
                if name == "step" and rule.step_per_optimizer:  # the optimizer's counter, not one of its own
                    state[name] = optimizer.runtime.step_counter(param.device)
                elif name not in state:
                    initial = rule.scalar_initial.get(name, 0.0)
                    initial = self.group[initial] if isinstance(initial, str) else initial
                    state[name] = torch.as_tensor(initial, dtype=torch.float32,  # a copy: a tensor lr stays the group's
                                                  device=param.device).reshape(()).clone()
            make_states = make_quantized_states if self.kinds else make_float_states
            self.first_step.append(make_states(rule, self.group, self.state_dtype, param, state))
            if self.master_names:
                make_residual(param, state, self.master_weight_bits)
        self.launches = []  # for the fused impl only
        self.scalar_buffers = pack_scalar_states(rule, self.locals, self.state_dicts)
        self.step_buffers = [buffer for buffer, _ in self.scalar_buffers.get("step", {}).values()]
        # What the step runs on: the local shards of an FSDP2 param's DTensor states (their storage), as real views.
        self.run_states = list(map(local_states, self.state_dicts)) if self.sharded else self.state_dicts
        if self.complex:
            self.run_states = [{name: real_view(value) for name, value in state.items()} for state in self.run_states]
        if self.impl == "triton":
            self._make_launches()
            self.hyper, self.flags = rule.kernel_arguments(self.group)  # SGDHD's α is a tensor only now
        self.n_params = len(self.params_list)
        self.state_tensors = _states_of(self.state_dicts, self.tracked_names)
        self.param_pointers = self._param_pointers()
        if self.sparse:
            return  # what a reused plan compares against: a plan of sparse gradients is used once (StepPlan.make)
        self.grad_pointers = list(map(_data_ptr, self.grads))
        self.grad_layouts = [(g.shape, g.stride(), g.dtype, g.device) for g in self.grads]
        self.grad_refs = list(map(weakref.ref, self.grads))

    def _make_launches(self):
        rule = self.rule
        self.sums = sums = lay_out(rule, self.group, self.views, self.run_states, self.shards, self.scalar_buffers)
        slots = [TensorSlots(p, g, tuple(state[name] for name in self.state_names), scalars,
                             (("FIRST_STEP", first),) if rule.has_first_step_states else (), row_length,
                             residual=state.get(MASTER_RESIDUAL) if self.master_names else None,
                             scales=tuple(state[scale_name(name)] for name in self.kinds), first=offset)
                 for p, g, state, scalars, first, row_length, offset in zip(self.views, self.grads, self.run_states,
                                                                            sums.scalars, self.first_step,
                                                                            sums.row_lengths, self.firsts)]
        quantization = None
        if self.kinds:
            fmt = FORMATS[self.state_dtype]
            quantization = QuantizedStates(fmt.bits, fmt.block, tuple(UNSIGNED[kind] for kind in self.kinds.values()),
                                           tuple(STOCHASTIC[kind] for kind in self.kinds.values()))
        self.launches = [(members, len(members) == len(slots), launch)
                         for members, launch in prepare_launches(slots, rule.name, quantization)]

    def _param_pointers(self) -> list:
        return list(map(_data_ptr, map(local, self.params) if self.sharded else self.params))

    def refresh(self, optimizer) -> bool:
        """This step's gradients and hyperparameters into the plan; False when it must be rebuilt."""
        rule, group = self.rule, self.group
        if group["params"] is not self.params_list or len(self.params_list) != self.n_params:
            return False
        check_mode(rule, group, f"param group {self.index}")
        grads = list(map(_grad, self.all_params))
        if all(self.has_grad):
            if not all(map(operator.is_not, grads, repeat(None))):
                return False
        else:
            if [g is not None for g in grads] != self.has_grad:
                return False
            grads = [g for g in grads if g is not None]
        if self.sharded:
            grads = [local(g) for g in grads]
            if self.wholes:  # each rank's part checked, then the whole buffer that run() gathers into
                if not self.wholes.grads_match(grads):
                    return False
                grads = self.wholes.substitute(grads, self.wholes.grads)
        if self.complex:
            grads = list(map(real_view, grads))
        if self._param_pointers() != self.param_pointers:
            return False  # a param moved (p.data = ...): check it and its states again
        try:
            if not same_objects(_states_of(self.state_dicts, self.tracked_names), self.state_tensors):
                return False
        except KeyError:
            return False  # a state dropped (a quantized state's scales): the rebuild makes or refuses it
        # new tensors, as after zero_grad(set_to_none=True)
        if not same_objects(grads, [ref() for ref in self.grad_refs]):
            for grad, (shape, stride, dtype, device) in zip(grads, self.grad_layouts):
                if (grad.layout is not torch.strided or grad.shape != shape or grad.stride() != stride
                        or grad.dtype is not dtype or grad.device != device):
                    return False  # the rebuild names what is wrong, or takes the reference under "auto"
            self.grad_refs = list(map(weakref.ref, grads))
        self.grads = grads  # for this step's run only
        pointers = list(map(_data_ptr, grads))
        if pointers != self.grad_pointers:
            for members, whole, launch in self.launches:
                if whole:
                    launch.set_grads(grads, pointers)
                else:
                    launch.set_grads([grads[i] for i in members], [pointers[i] for i in members])
            self.grad_pointers = pointers
        values = list(map(group.__getitem__, self.hyper_names))
        if not same_objects(values, self.hyper_values):
            # every one, not only those that changed: a check may read others (nesterov reads momentum)
            check_hyperparameters(rule, group, f"param group {self.index}", host_values_only=True)
            self.hyper_values = values
            if (rule.state_names(group) != self.state_names
                    or [group[key] for key in rule.plan_keys] != self.plan_options):
                return False
        if self.impl == "triton":
            self.hyper, flags = rule.kernel_arguments(group)
            if flags != self.flags:
                return False
        return True

    def run(self, optimizer, amp: Optional[tuple]) -> None:
        grads, self.grads = self.grads, None  # the plan holds no gradient between steps
        if not self.params:
            return
        # The optimizer counts the step, for either impl: one op per group, not one per tensor. The
        # reference's skipped steps never get here.
        count_step(self.step_buffers, None if self.impl == "reference" else amp)
        quantization_count = self.group[COUNT_KEY] if self.kinds else None
        if quantization_count is not None:  # this step's draws for the codes: + 0 on a step GradScaler skips
            quantization_count.add_(1 if self.impl == "reference" or amp is None else amp[1].eq(0))
        if self.wholes:
            self.wholes.gather()
        if self.impl == "reference":
            optimizer.runtime.reference_step(self.group, self.views, grads, self.run_states, self.first_step, amp,
                                             self.kinds, self.firsts)
        else:
            self._launch(optimizer, amp, quantization_count)
        if self.wholes:
            self.wholes.scatter()

    def _launch(self, optimizer, amp: Optional[tuple], quantization_count) -> None:
        rule, sums = self.rule, self.sums
        if sums.outputs:  # some declared sum exists for this group (Sum.when)
            sums.before()
            for _, _, launch in self.launches:
                launch.reduce(rule.reduce, rule.reduce_reads_param, sums.outputs, self.hyper, self.flags, amp)
            sums.after(amp)
        advance(rule, self.group, self.scalar_buffers, False, amp)
        for _, _, launch in self.launches:
            launch.update(rule.update, rule.update_reads_param, self.hyper, self.flags,
                          optimizer.runtime.rounding_seed(launch.device), amp, quantization_count)
        advance(rule, self.group, self.scalar_buffers, True, amp)


class StepPlan:
    """The plan of a whole step (every group), or of one param's step under gradient release."""

    def __init__(self, optimizer, only: Optional[torch.Tensor] = None):
        """Every check, no change: a plan that raises here leaves the optimizer as it was."""
        self.param_groups, self.whole = optimizer.param_groups, only is None
        if only is None:
            self.groups = [GroupPlan(optimizer, index) for index in range(len(optimizer.param_groups))]
        else:
            self.groups = [GroupPlan(optimizer, optimizer.runtime.group_of(only), only=only)]
        self.makes_first_step_states = any(g.makes_first_step_states for g in self.groups)
        self.has_reference = any(g.impl == "reference" and g.params for g in self.groups)

    def make(self, optimizer) -> None:
        """The changes: states made, scalar states packed, launches built. After every check passed."""
        for group_plan in self.groups:
            group_plan.make(optimizer)
        self.n_groups = len(optimizer.param_groups)
        self.state = optimizer.state
        self.state_values = list(optimizer.state.values())
        # Its launches carry the first step's flags; a sparse gradient has no storage whose address the
        # next step could compare, and autograd makes a new one at each backward anyway.
        self.single_use = self.makes_first_step_states or any(g.sparse for g in self.groups)

    def refresh(self, optimizer) -> bool:
        """False when the plan must be rebuilt; raises (before any change) for a bad hyperparameter."""
        if optimizer.param_groups is not self.param_groups or optimizer.state is not self.state:
            return False
        if self.whole and (len(self.param_groups) != self.n_groups
                           or not same_objects(list(self.state.values()), self.state_values)):
            return False  # a group added, a param's state dict replaced or dropped
        if not self.whole and optimizer.state.get(self.groups[0].params[0]) is not self.groups[0].state_dicts[0]:
            return False
        return all(group_plan.refresh(optimizer) for group_plan in self.groups)

    def run(self, optimizer, amp: Optional[tuple]) -> None:
        # A rule whose step is the optimizer's counts it here, once for every group and every param, with
        # or without a gradient; under gradient release each backward counts it (FusedOptimizer's hook)
        # and a step() applies what gradients are left in that backward's micro-step.
        if self.whole and optimizer.rule.step_per_optimizer and not optimizer.gradient_release:
            optimizer.runtime.count_step(None if self.has_reference else amp)
        for group_plan in self.groups:
            group_plan.run(optimizer, amp)


def count_step(counters, amp: Optional[tuple]) -> None:
    """Each step counter + 1, or + 0 on a step GradScaler skips (decided on the device: no sync)."""
    for counter in counters:
        if amp is None:
            counter.add_(1.0)
        else:
            counter.add_(amp[1].to(counter.device).eq(0))
