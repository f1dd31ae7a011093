"""The one optimizer base class: param groups, lazy state, validation, and the dispatch between the
reference and the fused Triton step. A rule adds nothing here; it is a row of optim.registry."""
import inspect
import itertools

import torch

from kernels import TensorSlots, ops
from kernels.launcher import INTERPRETED, capturing, check_slots
from kernels.shards import Shards, local
from optim.registry import FIRST_STEP
from optim.rounding import stochastic_round
from optim.validation import check_grad, check_hyperparameters, check_options, check_param

# Every class's keyword-only options besides its rule's hyperparameters, with their defaults.
OPTIONS = dict(impl="auto", state_dtype=None, stochastic_rounding=False, seed=0, gradient_release=False)
# torch.optim's switches between its own implementations; ours is `impl`.
TORCH_IMPLEMENTATION_SWITCHES = ("foreach", "fused", "capturable", "differentiable")


class FusedOptimizer(torch.optim.Optimizer):
    """Base of every optimizer here; subclasses are made from registry rows by ``optimizer_class``.

    ``impl``: "reference" runs the rule's pure-PyTorch oracle; "triton" the fused multi-tensor
    kernel (params on a CUDA device, or TRITON_INTERPRET=1 on the CPU); "auto" takes Triton where it
    can run and supports the params' dtype, the reference elsewhere. ``state_dtype``: the dtype of
    the element-wise state tensors (default: each param's own dtype, as torch.optim).
    ``stochastic_rounding``: bf16 and fp16 params and states are rounded stochastically (unbiased),
    reproducibly from ``seed``, so that updates below half an ulp still move them on average.
    ``gradient_release`` (rules that fold gradients into their state: Tiger): each param's gradient
    is applied the moment autograd has accumulated it, then freed; ``backward()`` alone trains.
    """

    rule = None  # set on each subclass: its optim.registry.Rule
    # torch.amp.GradScaler.step sets self.grad_scale and self.found_inf and calls step(): the kernel
    # unscales the gradients and, on found_inf, writes nothing (as torch's fused Adam).
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, impl="auto", state_dtype=None, stochastic_rounding=False, seed=0,
                 gradient_release=False):
        check_options(self.rule, impl=impl, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                      seed=seed, gradient_release=gradient_release)
        check_hyperparameters(self.rule.name, defaults, self.rule.defaults, "the optimizer's arguments")
        self.impl = impl
        self.state_dtype = state_dtype
        self.stochastic_rounding, self.seed, self.gradient_release = stochastic_rounding, seed, gradient_release
        self._rounding_seeds = {}  # device -> 0-d int64: the seed above bit 32, launches counted below
        self._reference_generator = torch.Generator().manual_seed(seed)
        self._group_index = {}  # param -> index of its group, for gradient release
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        try:
            check_hyperparameters(self.rule.name, group, self.rule.defaults, f"param group {index}")
            for i, param in enumerate(group["params"]):
                check_param(self.rule.name, param, f"param {i} of param group {index}",
                            self.rule.nonnegative_params)
        except (TypeError, ValueError):
            self.param_groups.pop()  # the group was not valid: leave the optimizer as it was
            raise
        for param in group["params"]:
            self._group_index[param] = index
            if self.gradient_release:
                param.register_post_accumulate_grad_hook(self._release_gradient)

    @torch.no_grad()
    def _release_gradient(self, param):
        """Gradient release: this param's step (a micro-step under accumulation), then its gradient freed."""
        index = self._group_index[param]
        impl = self._check_group(index, [param])
        self._update(self.param_groups[index], [param], impl)
        param.grad = None

    def counter(self, name):
        """The sum over every param of a counting state (Tiger: "nan_skips"), as a device tensor: no sync."""
        if name not in self.rule.counters:
            raise ValueError(f"{self.rule.name}: counter({name!r}) is not one of its counters {self.rule.counters}")
        values = [state[name] for state in self.state.values() if name in state]
        if not values:
            return torch.zeros((), dtype=torch.float32)
        return torch.stack([value.to(values[0].device) for value in values]).sum()

    def _resolve_impl(self, params, where):
        on_cuda = all(p.is_cuda for p in params)
        runnable = on_cuda or (INTERPRETED and all(p.device.type == "cpu" for p in params))
        supported = all(p.dtype in self.rule.dtypes for p in params)
        if self.impl == "auto":
            return "triton" if runnable and supported else "reference"
        if self.impl == "triton" and not runnable:
            raise RuntimeError(f"{self.rule.name}: impl='triton' needs the params of {where} on a CUDA device, or "
                               "on the CPU with TRITON_INTERPRET=1 set before triton is imported; "
                               "use impl='reference' or impl='auto'")
        if self.impl == "triton":
            check_slots([TensorSlots(local(p), local(p.grad)) for p in params])
        return self.impl

    def _init_state(self, param, group):
        """Create the states this group needs and the param lacks; FIRST_STEP states are left to the
        rule's first step (the reference makes them; _fused_step flags them for the kernel)."""
        state = self.state[param]
        param = local(param)  # an FSDP2 shard's state covers the shard: a plain tensor beside it
        for name in self.rule.scalar_states:
            if name not in state:
                state[name] = torch.zeros((), dtype=torch.float32, device=param.device)
        for spec in self.rule.states:
            if spec.exists(group) and spec.name not in state and spec.initial != FIRST_STEP:
                initial = group[spec.initial] if isinstance(spec.initial, str) else spec.initial
                state[spec.name] = torch.full_like(param, initial, dtype=self.state_dtype or param.dtype,
                                                   memory_format=torch.contiguous_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        amp = self._amp_scaling()
        # Every check runs before any tensor changes: a bad group never leaves others half-updated.
        work = []
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                work.append((group, params, self._check_group(index, params)))
        for group, params, impl in work:
            self._update(group, params, impl, amp)
        return loss

    def _amp_scaling(self):
        """None, or (inverse loss scale, found_inf) from the grad_scale and found_inf GradScaler set."""
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        if grad_scale is None and found_inf is None:
            return None
        if self.gradient_release:
            raise RuntimeError(f"{self.rule.name}: gradient_release=True applies each gradient inside backward, "
                               "before GradScaler can check it for infs; train in bf16 without a GradScaler, or "
                               "without gradient_release")
        reference = grad_scale if grad_scale is not None else found_inf
        inv_scale = (grad_scale.double().reciprocal().float() if grad_scale is not None
                     else torch.ones((), dtype=torch.float32, device=reference.device))
        found_inf = (found_inf.float() if found_inf is not None
                     else torch.zeros((), dtype=torch.float32, device=reference.device))
        return inv_scale.reshape(()), found_inf.reshape(())

    def _check_group(self, index, params):
        """Check group ``index`` and the gradients of ``params``; return the impl that will run them."""
        where = f"param group {index}"
        check_hyperparameters(self.rule.name, self.param_groups[index], self.rule.defaults, where,
                              host_values_only=True)
        for i, param in enumerate(params):
            check_grad(self.rule.name, param, f"param {i} of {where}")
        return self._resolve_impl(params, where)

    def _update(self, group, params, impl, amp=None):
        if capturing(params[0].device):
            self._check_capturable(group, params, impl)
        shards = Shards.of(params, f"{self.rule.name}'s param group")
        if shards is not None and impl == "reference" and self.rule.prepare is not None:
            raise RuntimeError(f"{self.rule.name}: the reference reduces over whole tensors, which FSDP2 params "
                               "are not; use impl='triton' (on the CPU, with TRITON_INTERPRET=1), whose step sums "
                               "those reductions over the shards")
        grads = [local(p.grad) for p in params]
        if amp is not None and (impl == "reference" or self._makes_first_step_states(group, params)):
            # The reference, and a kernel that would make a state on this step (SGD's buffer, left
            # unwritten on a skipped step), ask the host whether to step: one sync.
            if amp[1].item() != 0:
                return
            if impl == "reference":
                grads, amp = [g.float() * amp[0].to(g.device) for g in grads], None
        states = [self._init_state(p, group) for p in params]
        params = [local(p) for p in params]  # the state is keyed by the DTensor, the math runs on its shard
        if impl == "reference":
            self._reference_step(group, params, grads, states)
        else:
            self._fused_step(group, params, grads, states, amp, shards)

    def _check_capturable(self, group, params, impl):
        """A step recorded into a CUDA graph must neither ask the host anything nor make its state:
        a state made during capture would be made again, zeroed, at every replay."""
        if impl != "triton":
            raise RuntimeError(f"{self.rule.name}: a CUDA graph can capture only the fused step; the reference "
                               "reads its step counter on the host. Use impl='triton' (or 'auto' with params of a "
                               f"dtype in {list(self.rule.dtypes)})")
        names = (*self.rule.scalar_states, *self.rule.state_names(group))
        missing_seed = self.stochastic_rounding and any(p.device not in self._rounding_seeds for p in params)
        if missing_seed or any(name not in self.state.get(p, {}) for p in params for name in names):
            raise RuntimeError(f"{self.rule.name}: the optimizer state does not exist yet; run a few steps "
                               "eagerly (on a side stream, as torch.cuda.graphs' recipe warms up) before capturing "
                               "step(), so that every state tensor is made outside the graph")

    def _makes_first_step_states(self, group, params) -> bool:
        names = [s.name for s in self.rule.states if s.initial == FIRST_STEP and s.exists(group)]
        return any(name not in self.state[p] for p in params for name in names)

    def _reference_step(self, group, params, grads, states):
        arguments = ()
        if self.rule.has_first_step_states:
            arguments = (self._allocate_first_step_states(group, params, states),)
        if not self.stochastic_rounding:
            self.rule.reference(params, grads, states, group, *arguments)
            return
        # The reference runs on fp32 copies of the 16-bit tensors, which are then rounded stochastically.
        full_params = [p.float() for p in params]
        full_states = [{name: value.float() for name, value in state.items()} for state in states]
        self.rule.reference(full_params, grads, full_states, group, *arguments)
        pairs = list(zip(params, full_params))
        pairs += [(state[name], full_state[name]) for state, full_state in zip(states, full_states) for name in state]
        for tensor, full in pairs:
            if full is not tensor:  # a 16-bit tensor: its fp32 copy goes back rounded
                tensor.copy_(stochastic_round(full, tensor.dtype, self._reference_generator))

    def _allocate_first_step_states(self, group, params, states):
        """Allocate (uninitialised) the FIRST_STEP states the params lack; per param, whether this is
        their first step, when the rule must write them without reading them."""
        first_step = []
        for param, state in zip(params, states):
            missing = [name for name in self.rule.state_names(group) if name not in state]
            for name in missing:
                state[name] = torch.empty_like(param, dtype=self.state_dtype or param.dtype,
                                               memory_format=torch.contiguous_format)
            first_step.append(bool(missing))
        return first_step

    def _fused_step(self, group, params, grads, states, amp=None, shards=None):
        rule = self.rule
        if "step" in rule.scalar_states:
            # One launch for the group; a step GradScaler skips is not counted (on the device: no sync).
            steps = [state["step"] for state in states]
            if amp is None:
                torch._foreach_add_(steps, 1.0)
            else:  # a list of one tensor each: the overload taking one tensor reads it on the host on a CPU
                taken = amp[1].to(params[0].device).eq(0).float()
                torch._foreach_add_(steps, [taken] * len(steps))
        names = rule.state_names(group)
        first_step = self._allocate_first_step_states(group, params, states)
        tensor_flags = [(first,) if rule.has_first_step_states else () for first in first_step]
        if rule.prepare is not None:
            scalars, row_lengths = rule.prepare(group, params, grads, states, amp, shards)
        else:
            scalars = [tuple(state[name] for name in rule.scalar_states) for state in states]
            row_lengths = [0] * len(params)
        slots = [TensorSlots(p, g, tuple(state[n] for n in names), s, f, r)
                 for p, g, state, s, f, r in zip(params, grads, states, scalars, tensor_flags, row_lengths)]
        hyper, flags = rule.kernel_arguments(group)
        ops.update(rule.update, slots, hyper, flags, rule.name, self._launch_seeds(params), amp)

    def _launch_seeds(self, params):
        """None (round to nearest), or each device's stochastic-rounding seed tensor."""
        if not self.stochastic_rounding:
            return None
        for device in {p.device for p in params}:
            if device not in self._rounding_seeds:
                self._rounding_seeds[device] = torch.tensor(self.seed << 32, dtype=torch.int64, device=device)
        return self._rounding_seeds

    def load_state_dict(self, state_dict):
        """torch.optim's load, then each state back in this optimizer's state dtype and the scalar
        states (the step) on the param's device, where the fused kernel reads them."""
        super().load_state_dict(state_dict)
        saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, param in zip(saved_ids, params):
            for name, value in state_dict["state"].get(saved_id, {}).items():
                if not isinstance(value, torch.Tensor):
                    continue
                # copy=True: the caller's dict may hold the very tensors another optimizer is using
                dtype = torch.float32 if name in self.rule.scalar_states else self.state_dtype or param.dtype
                self.state[param][name] = value.to(device=param.device, dtype=dtype, copy=True)


def optimizer_class(rule):
    """The torch.optim.Optimizer subclass for one registry row, with the row's signature."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                  inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
                   for name, default in rule.defaults.items()]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                   for name, default in OPTIONS.items()]
    signature = inspect.Signature(parameters)

    def __init__(self, *args, **kwargs):
        for switch in TORCH_IMPLEMENTATION_SWITCHES:
            if switch in kwargs:
                raise TypeError(f"{rule.name}: {switch}= selects one of torch.optim's implementations; here "
                                "impl='auto' | 'triton' | 'reference' chooses between the fused kernel and the reference")
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{rule.name}: {error}; its arguments are {list(signature.parameters)[2:]}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        params, options = arguments.pop("params"), {name: arguments.pop(name) for name in OPTIONS}
        FusedOptimizer.__init__(self, params, arguments, **options)

    __init__.__signature__ = signature
    doc = f"{rule.summary}.\n\nThe equations: {rule.reference.__module__}.{rule.reference.__name__}.\n\n{FusedOptimizer.__doc__}"
    return type(rule.name, (FusedOptimizer,), {"rule": rule, "__init__": __init__, "__doc__": doc,
                                              "__module__": "optim", "__qualname__": rule.name})
