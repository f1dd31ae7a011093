"""What an optimizer keeps between steps besides torch's state and param groups: its runtime.

``FusedOptimizer.runtime`` is the one door through which the step plan (``optim.plan``) and a
checkpoint's load (``optim.checkpoint``) reach it: which group holds each param, the step counters of
a rule whose step is the optimizer's (Tiger), the stochastic-rounding seeds, the reference's random
generator and its step, and the plans reused from step to step. The options it reads (seed,
stochastic_rounding, master_weight_bits) are fixed when the optimizer is built; ``impl``, which may
change, the plan reads from the optimizer, and changing it forgets the plans here."""
from typing import Optional

import torch

from fusedoptim.optim.master_weights import rebuild_master, split_master
from fusedoptim.optim.plan import StepPlan, count_step
from fusedoptim.optim.quantization import COUNT_KEY, dequantize, quantize, scale_name
from fusedoptim.optim.rounding import stochastic_round
from fusedoptim.optim.shards import local
from fusedoptim.optim.states import MASTER_RESIDUAL


class Runtime:
    """One optimizer's runtime. ``saved`` (``Runtime.saved()`` of another) makes a copy's: its step
    counts, seeds and generator, so that the copy steps exactly as the original; never its plans."""

    def __init__(self, rule, seed: int, stochastic_rounding: bool, master_weight_bits: Optional[int],
                 saved: Optional[dict] = None):
        self.rule, self.seed = rule, seed
        self.stochastic_rounding, self.master_weight_bits = stochastic_rounding, master_weight_bits
        self._step_counters = {}  # device -> the step count of a rule with step_per_optimizer (Tiger)
        self._rounding_seeds = {}  # device -> 0-d int64: the seed above bit 32, launches counted below
        self._generator = torch.Generator().manual_seed(seed)
        if saved is not None:
            self._step_counters, self._rounding_seeds = saved["step_counters"], saved["rounding_seeds"]
            self._generator.set_state(saved["generator_state"])
        self._group_index = {}  # param -> the index of its param group
        self.forget_plans()

    def saved(self) -> dict:
        """What a copy (deepcopy, pickle, torch.save) of the optimizer keeps: see ``Runtime``."""
        return dict(step_counters=self._step_counters, rounding_seeds=self._rounding_seeds,
                    generator_state=self._generator.get_state())

    # --- params -----------------------------------------------------------------------------------

    def add_params(self, params, group_index: int) -> None:
        """A param group's params, from add_param_group; Tiger's counter exists from the first step()
        on, even one without any gradient."""
        for param in params:
            self._group_index[param] = group_index
            if self.rule.step_per_optimizer:
                self.step_counter(local(param).device)

    def group_of(self, param) -> int:
        return self._group_index[param]

    # --- the optimizer's step count (a rule with step_per_optimizer) -------------------------------

    def step_counter(self, device) -> torch.Tensor:
        """The optimizer's step count on ``device``: made at the first param there, from the count on
        another device if the optimizer has one, so that all agree."""
        counter = self._step_counters.get(device)
        if counter is None:
            counts = list(self._step_counters.values())
            counter = (counts[0].to(device, copy=True) if counts
                       else torch.zeros((), dtype=torch.float32, device=device))
            self._step_counters[device] = counter
        return counter

    def step_counters(self) -> list:
        """The count on each device: the same number, as 0-d fp32 tensors."""
        return list(self._step_counters.values())

    def count_step(self, amp: Optional[tuple]) -> None:
        """The optimizer's step counted on every device (+ 0 on a step GradScaler skips)."""
        count_step(self._step_counters.values(), amp)

    def load_step_count(self, count: float) -> None:
        """A checkpoint's count on every device, as new tensors (the old ones are the states of no param)."""
        self._step_counters = {device: torch.tensor(count, dtype=torch.float32, device=device)
                               for device in self._step_counters}

    # --- randomness --------------------------------------------------------------------------------

    def rounding_seed(self, device) -> Optional[torch.Tensor]:
        """None (round to nearest), or this device's stochastic-rounding seed tensor."""
        if not self.stochastic_rounding:
            return None
        if device not in self._rounding_seeds:
            self._rounding_seeds[device] = torch.tensor(self.seed << 32, dtype=torch.int64, device=device)
        return self._rounding_seeds[device]

    def reference_step(self, group, params, grads, states, first_step, amp=None, kinds=None, firsts=None) -> None:
        """The rule's oracle over one group; GradScaler's verdict was read on the host before. ``kinds``
        (quantized states: name → kind, in the kernel's order): the oracle runs on their fp32 values,
        laid out as the params, which are then quantized back with the kernel's scheme and draws (keyed
        by each param's ``firsts``: an FSDP2 shard's offset in its param, else 0)."""
        rule = self.rule
        if kinds:
            scales = set(map(scale_name, kinds))
            full_states = [{name: dequantize(value, state[scale_name(name)], kinds[name], param) if name in kinds
                            else value for name, value in state.items() if name not in scales}
                           for param, state in zip(params, states)]
            self.reference_step(group, params, grads, full_states, first_step, amp)
            for state, full_state, first in zip(states, full_states, firsts or [0] * len(states)):
                for column, (name, kind) in enumerate(kinds.items()):
                    quantize(full_state[name], kind, state[name], state[scale_name(name)], group[COUNT_KEY], column,
                             first)
            return
        if amp is not None:
            grads = [g.float() * amp[0].to(g.device) for g in grads]
        arguments = (first_step,) if rule.has_first_step_states else ()
        if self.master_weight_bits is not None:
            # The oracle steps the fp32 masters (fed fp32 gradients, as fp32 params are), split back after.
            residuals = [state[MASTER_RESIDUAL] for state in states]
            masters = [rebuild_master(p, residual) for p, residual in zip(params, residuals)]
            rule_states = [{name: value for name, value in state.items() if name != MASTER_RESIDUAL} for state in states]
            rule.reference(masters, [g.float() for g in grads], rule_states, group, *arguments)
            for param, residual, master in zip(params, residuals, masters):
                new_param, new_residual = split_master(master, param.dtype, residual.dtype)
                param.copy_(new_param)
                residual.copy_(new_residual)
            return
        if not self.stochastic_rounding:
            rule.reference(params, grads, states, group, *arguments)
            return
        # The reference runs on fp32 copies of the 16-bit tensors, which are then rounded stochastically.
        full_params = [p.float() for p in params]
        full_states = [{name: value.float() for name, value in state.items()} for state in states]
        rule.reference(full_params, grads, full_states, group, *arguments)
        pairs = list(zip(params, full_params))
        pairs += [(state[name], full_state[name]) for state, full_state in zip(states, full_states) for name in state]
        for tensor, full in pairs:
            if full is not tensor:  # a 16-bit tensor: its fp32 copy goes back rounded
                tensor.copy_(stochastic_round(full, tensor.dtype, self._generator))

    # --- plans -------------------------------------------------------------------------------------

    @property
    def plan(self) -> Optional[StepPlan]:
        """The plan the next step will try to reuse (None: it builds one)."""
        return self._plan

    def forget_plans(self) -> None:
        """Every plan dropped: the next step (and each gradient release) builds its own, with every check."""
        self._plan, self._release_plans = None, {}

    def step(self, optimizer, amp: Optional[tuple]) -> None:
        """The step: its plan reused, or built with every check before any tensor changes."""
        plan = self._plan
        if plan is None or not plan.refresh(optimizer):
            self._plan = None
            plan = StepPlan(optimizer)
            if amp is not None and plan.makes_first_step_states and amp[1].item() != 0:
                return  # a skipped step makes no state that its first step would have written (SGD's buffer)
            plan.make(optimizer)
            self._plan = None if plan.single_use else plan
        if amp is not None and plan.has_reference and amp[1].item() != 0:
            return  # the reference asks the host whether GradScaler skips this step: one sync
        plan.run(optimizer, amp)

    def release_plan(self, optimizer, param) -> StepPlan:
        """The plan of one param's step under gradient release: reused, or built and made."""
        plan = self._release_plans.get(param)
        if plan is None or not plan.refresh(optimizer):
            plan = StepPlan(optimizer, only=param)
            plan.make(optimizer)
            self._release_plans[param] = None if plan.single_use else plan
        return plan
