"""The one optimizer base class: param groups, lazy state, copies, and the step: the launch plan
(optim.plan) run eagerly, or one op under torch.compile; loading a checkpoint is optim.checkpoint's. A
rule adds nothing here; it is a row of optim.registry."""
import inspect
import textwrap

import torch

from fusedoptim.optim import ops
from fusedoptim.optim.checkpoint import load_checkpoint, saved_checkpoint
from fusedoptim.optim.modes import TrainEvalSwitch
from fusedoptim.optim.plan import same_objects
from fusedoptim.optim.runtime import Runtime
from fusedoptim.optim.torch_switches import SWITCHES, impl_from_switches
from fusedoptim.optim.validation import check_hyperparameters, check_options, check_param

# Every class's keyword-only options besides its rule's hyperparameters, with their defaults.
OPTIONS = dict(impl="auto", state_dtype=None, stochastic_rounding=False, seed=0, gradient_release=False,
               master_weight_bits=None)
# The one option a built optimizer may change; the others decide what it has made (below).
CHANGEABLE = ("impl",)


def _option(name: str) -> property:
    """Option ``name`` as an attribute: read-only, or (``CHANGEABLE``) checked with the others and
    honoured from the next step, whose plan is rebuilt."""
    def get(self):
        return self._options[name]

    def set(self, value):
        if name not in CHANGEABLE:
            raise AttributeError(f"{self.rule.name}: {name} is fixed once the optimizer is built (its states, "
                                 f"hooks and random streams follow it); build a new optimizer with {name}={value!r} "
                                 "and load_state_dict(old.state_dict()) into it, which converts the states")
        check_options(self.rule, **{**self._options, name: value})  # a bad value changes nothing
        self._options[name] = value
        self.runtime.forget_plans()

    return property(get, set)


def _with_options(cls):
    for name in OPTIONS:
        setattr(cls, name, _option(name))
    return cls


@_with_options
class FusedOptimizer(torch.optim.Optimizer):
    """Options of every class (keyword-only):

    impl="auto": "reference" runs the rule's pure-PyTorch oracle; "triton" the fused multi-tensor
        kernel (params on a CUDA device, or TRITON_INTERPRET=1 on the CPU); "auto" takes Triton where
        it can run the params as they are (device, dtype, a dense layout shared by param, gradient and
        states), the reference elsewhere. torch.optim's foreach/fused/capturable/differentiable are
        taken too and mapped onto impl (docs/drop-in.md).
    state_dtype=None: the dtype of the element-wise states (None: each param's own dtype, as
        torch.optim), a float dtype, or "int8" / "int4": codes and one fp32 scale per block,
        dequantized and requantized inside the step (docs/mixed-precision.md).
    stochastic_rounding=False: bf16 and fp16 params and states are rounded stochastically
        (unbiased), reproducibly from ``seed``, so that updates below half an ulp still move them on
        average.
    seed=0: the seed of stochastic rounding's random bits.
    gradient_release=False: each param's gradient is applied the moment autograd has accumulated
        it, then freed; ``backward()`` alone trains (every rule whose row allows it; under
        accumulation, the rules that fold gradients: Tiger).
    master_weight_bits=None (bf16 and fp16 params): 32 steps an fp32 master kept as the param plus
        an int16 residual (state "master_residual"), exactly as fp32 params would step; 24 an int8
        residual (1/256 of θ's ulp).

    Each option is an attribute of the same name. ``impl`` may be set on a built optimizer (to run the
    reference while debugging, say): the value is checked, and the next step rebuilds its plan with
    it. The others are read-only (AttributeError): they decide the states, hooks and random streams the
    optimizer has made; build a new optimizer and ``load_state_dict`` the old one's state into it.

    Every class here is this one with a registry row (``fusedoptim.optim.registry.RULES``) for its
    ``rule``: made by ``optimizer_class``.
    """

    rule = None  # set on each subclass: its optim.registry.Rule
    # torch.amp.GradScaler.step sets self.grad_scale and self.found_inf and calls step(): the kernel
    # unscales the gradients and, on found_inf, writes nothing (as torch's fused Adam).
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, **options):
        """``options``: any of OPTIONS, by name; those not given take its defaults."""
        options = {**OPTIONS, **options}
        check_options(self.rule, **options)
        check_hyperparameters(self.rule, defaults, "the optimizer's arguments")
        self._options = options
        self.runtime = Runtime(self.rule, self.seed, self.stochastic_rounding, self.master_weight_bits)
        self._start_planning()
        super().__init__(params, _own_dicts(defaults))

    def _start_planning(self):
        """A key for the compiled step's op; the params it hands the op, made by add_param_group."""
        self._params = []
        self._key = ops.register(self._step_from_op)
        self._backward_counted = False  # gradient release: whether this backward's micro-step was counted

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        group.update(_own_dicts(group))  # the caller's group object stays the group, as in torch.optim
        try:
            check_hyperparameters(self.rule, group, f"param group {index}")
            for i, param in enumerate(group["params"]):
                check_param(self.rule, param, f"param {i} of param group {index}")
        except (TypeError, ValueError):
            self.param_groups.pop()  # the group was not valid: leave the optimizer as it was
            raise
        self._register_params(index)

    def _register_params(self, index):
        # Every param in group order, as a new list: what the compiled step hands its op. A list of its
        # own, so that the traced step reads no param group (dynamo would guard on a float lr's value).
        self._params = [param for group in self.param_groups for param in group["params"]]
        params = self.param_groups[index]["params"]
        self.runtime.add_params(params, index)
        if self.gradient_release:
            for param in params:
                param.register_post_accumulate_grad_hook(self._release_gradient)

    @torch.no_grad()
    def _release_gradient(self, param):
        """Gradient release: this param's step (a micro-step under accumulation), then its gradient freed."""
        plan = self.runtime.release_plan(self, param)
        if self.rule.step_per_optimizer and not self._backward_counted:
            # A backward is one micro-step: its first gradient counts it, for every param, and autograd
            # calls back when the backward has ended, so that the next backward counts its own.
            self.runtime.count_step(None)
            self._backward_counted = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
        plan.run(self, None)
        param.grad = None

    def _end_backward(self):
        """Autograd's call at the end of the backward that counted a micro-step. A backward run inside a
        node of another (a reentrant activation checkpoint's) is part of that one's micro-step: the note
        waits for the node, then for the end of the enclosing backward."""
        node = torch._C._current_autograd_node()
        if node is None:
            self._backward_counted = False
        else:
            node.register_hook(lambda grad_inputs, grad_outputs:
                               torch.autograd.Variable._execution_engine.queue_callback(self._end_backward))

    def counter(self, name):
        """The sum over every param of a counting state (Tiger: "nan_skips"), as a device tensor: no sync."""
        if name not in self.rule.counters:
            raise ValueError(f"{self.rule.name}: counter({name!r}) is not one of its counters {self.rule.counters}")
        values = [state[name] for state in self.state.values() if name in state]
        if not values:
            return torch.zeros((), dtype=torch.float32)
        return torch.stack([value.to(values[0].device) for value in values]).sum()

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        if torch.compiler.is_compiling():
            self._compiled_step()
        else:
            self._step(self._amp_scaling())
        return loss

    def _step(self, amp, given_params=None):
        if given_params is not None and not same_objects(given_params, [p for g in self.param_groups for p in g["params"]]):
            raise RuntimeError(f"{self.rule.name}: the compiled step handed its op other tensors than the optimizer's "
                               "params; it would update copies. Compile optimizer.step as a whole")
        self.runtime.step(self, amp)

    def _compiled_step(self):
        """What torch.compile traces: one op call on the tensors the graph must order it by (the params it
        updates, GradScaler's tensors). The op's body (``_step_from_op``) runs ``_step`` at run time,
        which reads the gradients and the hyperparameters and checks everything as an eager step does:
        the graph guards on neither, so no value of the lr, float or tensor, ever recompiles it."""
        inv_scale, found_inf = self._amp_scaling() or (None, None)
        ops.step(self._key, self._params, inv_scale, found_inf)

    def _step_from_op(self, params, inv_scale, found_inf):
        with torch.no_grad():
            self._step(None if inv_scale is None else (inv_scale, found_inf), given_params=params)

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

    def state_dict(self):
        """torch.optim's state dict; an FSDP2 param's quantized states shown as DTensors that
        torch.distributed.checkpoint can save and reshard (``optim.saved_states``)."""
        return saved_checkpoint(self, super().state_dict())

    def load_state_dict(self, state_dict):
        """torch.optim's load, checked first and converted to this optimizer's states: optim.checkpoint."""
        load_checkpoint(self, state_dict, super().load_state_dict)

    def __getstate__(self):
        """torch's state (defaults, state, param groups), every option and the runtime's counts, seeds
        and generator, so that a deepcopy, a pickle or torch.save(optimizer) steps exactly like the
        original; plans are rebuilt by the copy."""
        return {**super().__getstate__(), **self._options, "runtime": self.runtime.saved()}

    def __setstate__(self, state):
        saved = state.pop("runtime", None)
        if "_reference_generator_state" in state:  # a copy made before the runtime was one object
            saved = dict(step_counters=state.pop("_step_counters"), rounding_seeds=state.pop("_rounding_seeds"),
                         generator_state=state.pop("_reference_generator_state"))
        if saved is None:
            super().__setstate__(state)
            return  # torch's load_state_dict sets the state and groups through here: not a copy
        # a copy made before an option existed steps without it
        self._options = {name: state.pop(name, default) for name, default in OPTIONS.items()}
        super().__setstate__(state)
        self.runtime = Runtime(self.rule, self.seed, self.stochastic_rounding, self.master_weight_bits, saved)
        self._start_planning()
        for index in range(len(self.param_groups)):
            self._register_params(index)

    def __repr__(self):
        text = super().__repr__()
        options = ", ".join(f"{name}={getattr(self, name)!r}" for name in OPTIONS)
        return text.replace(" (", f" ({options}", 1)


def closure_loss(closure):
    """torch.optim's step prologue: ``closure()``'s loss, with gradients enabled inside the no_grad
    step so that it can call backward; None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _own_dicts(hyperparameters: dict) -> dict:
    """``hyperparameters`` with a copy of each dict-valued one (Tiger's lr_schedule): torch.optim keeps
    the caller's object in the defaults and in every group that takes the default, so that whatever
    changes one in place (torch.distributed.checkpoint's dcp.load writes loaded keys into it) would
    change the caller's dict, the defaults and other groups with it."""
    return {name: dict(value) if isinstance(value, dict) else value for name, value in hyperparameters.items()}


def class_arguments(rule) -> str:
    """The class's arguments, each explained by its declaration (``Hyperparameter.doc``)."""
    lines = ["Arguments (a param group's dict may set any of them for its params):",
             "    params: the tensors to optimize, or param groups (dicts), as in torch.optim."]
    for spec in rule.arguments:
        tensor = "; a float or a one-element tensor, read on the device" if spec.tensor else ""
        lines.append(textwrap.fill(f"{spec.name}={spec.default!r}: {spec.doc}{tensor}.", width=100,
                                   initial_indent="    ", subsequent_indent="        "))
    return "\n".join(lines)


def class_signature(defaults: dict, options: dict) -> inspect.Signature:
    """``__init__(self, params, <defaults>, *, <options>)``: a generated class's signature."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                  inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
                   for name, default in defaults.items()]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                   for name, default in options.items()]
    return inspect.Signature(parameters)


def optimizer_class(rule):
    """The torch.optim.Optimizer subclass for one registry row, with the row's signature."""
    signature = class_signature(rule.defaults, OPTIONS)

    def __init__(self, *args, **kwargs):
        switches = {name: kwargs.pop(name) for name in SWITCHES if name in kwargs}  # torch.optim's
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{rule.name}: {error}; its arguments are {list(signature.parameters)[2:]}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        params, options = arguments.pop("params"), {name: arguments.pop(name) for name in OPTIONS}
        if switches:
            options["impl"] = impl_from_switches(rule, switches, arguments, options["impl"])
        arguments.update({spec.name: spec.recorded(arguments) for spec in rule.hyperparameters if spec.recorded})
        FusedOptimizer.__init__(self, params, arguments, **options)

    __init__.__signature__ = signature
    doc = (f"{rule.summary}.\n\n{class_arguments(rule)}\n\nThe equations: the docstring of "
           f"{rule.reference.__module__}.{rule.reference.__name__}, and docs/rules.md.\n\n{FusedOptimizer.__doc__}")
    bases = (TrainEvalSwitch, FusedOptimizer) if rule.modes is not None else (FusedOptimizer,)
    return type(rule.name, bases, {"rule": rule, "__init__": __init__, "__doc__": doc,
                                              "__module__": "fusedoptim.optim", "__qualname__": rule.name})
