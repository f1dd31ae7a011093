"""The base of the classes of the rules of other shapes (``LBFGS``, ``Muon``, ``Adafactor``: rows of
``optim.registry.SHAPED_RULES``; Muon's class is made by the matrix shape's engine, ``optim.matrix``). It gives them what the
registry's classes get from ``optim.base`` and ``optim.impl``: the ``impl`` option, checked; the impl
a step runs, chosen from why the kernels cannot run its params; torch's checks of the params a step
takes; torch's switches dropped from a torch checkpoint's groups. Each class declares what its
kernels take (``FUSED_DTYPES``, ``ONE_DEVICE``, ``WALKS_GRADIENTS``) and keeps its own arguments, state
and step. ``StepAsOneOp`` adds what a step without a closure needs to compile as the project's opaque
op (``optim.ops``), as the registry's classes do: Muon's and Adafactor's base.
"""
import torch
from torch.distributed.tensor import DTensor

from fusedoptim.optim import ops
from fusedoptim.optim.base import class_signature, closure_loss
from fusedoptim.optim.impl import fall_back, kernels_run_on
from fusedoptim.optim.quantization import scale_name
from fusedoptim.optim.plan import same_objects
from fusedoptim.optim.shards import local
from fusedoptim.optim.torch_switches import drop_switches
from fusedoptim.optim.validation import IMPLS, check_impl, check_quantized_state


def fused_problem(params, dtypes, one_device: bool, walks_gradients: bool) -> str:
    """Why the kernels cannot step ``params``, or "": on one device where ``one_device``, each where the
    kernels run, of one of ``dtypes``, contiguous (the kernels read rows and flat views, not strides),
    and where ``walks_gradients`` so is each gradient there is, in its param's dtype."""
    devices = {p.device for p in params}
    if one_device and len(devices) > 1:
        return f"the params are on {len(devices)} devices ({sorted(map(str, devices))}); the kernels need them on one"
    for i, p in enumerate(params):
        if not kernels_run_on([p.device]):
            return (f"param {i} is on {p.device}; the kernels need a CUDA device, or the CPU with TRITON_INTERPRET=1 "
                    "set before triton is imported")
        if p.dtype not in dtypes:
            return f"param {i} has dtype {p.dtype}; the kernels take {list(dtypes)}"
        grad = p.grad if walks_gradients else None
        if grad is not None and grad.dtype != p.dtype:
            return f"the gradient of param {i} is {grad.dtype}, its param {p.dtype}; the kernels read both in one dtype"
        for what, tensor in (("param", p), ("gradient", grad)):
            if tensor is not None and not tensor.is_contiguous():
                return (f"the {what} of param {i} is not contiguous (strides {tensor.stride()}); make it so with "
                        ".contiguous()")
    return ""


class UnregisteredOptimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer with the ``impl`` option (keyword-only): "reference" runs the oracle;
    "triton" the kernels, refusing (ValueError, before anything changes) params they cannot run;
    "auto" the kernels where they run, the reference elsewhere. Settable on a built optimizer, checked."""

    IMPLS = IMPLS
    FUSED_DTYPES: tuple = ()  # each subclass: the param dtypes its kernels take
    ONE_DEVICE = True  # the fused step needs the params it steps on one device
    WALKS_GRADIENTS = True  # the kernels read each gradient as it is laid out (L-BFGS copies them first)
    # The element-wise state a quantized ``state_dtype`` ("int8", "int4") codes: Muon's momentum_buffer,
    # Adafactor's variance; None keeps every state in the param's dtype (a class without the option too).
    QUANTIZED_STATE = ""
    state_dtype = None
    NEEDS_CLOSURE = False  # step(closure) re-evaluates the loss (L-BFGS): step() alone is refused
    # Whether a quantized state of an FSDP2 (DTensor) param is stepped whole on every rank (``optim.whole``,
    # Adafactor's vectors); else refused, a quantization block would straddle the shards.
    QUANTIZED_SHARDS_STEP_WHOLE = False
    # Whether such a state is instead coded per shard, in blocks of the local shard's elements, each rank
    # stepping its own (an element-wise state, as the registry's: Muon's momentum).
    QUANTIZED_PER_SHARD = False

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        check_impl(type(self).__name__, value)
        self._impl = value

    def chosen_impl(self, params=None) -> str:
        """The impl a step of ``params`` (those with gradients; None: every param) runs, "reference" or
        "triton". With impl="triton", why the kernels cannot run them (ValueError), before anything changes."""
        if params is None:
            params = [p for group in self.param_groups for p in group["params"]]
        if self.impl == "reference" or not params:
            return "reference"
        problem = fused_problem(params, self.FUSED_DTYPES, self.ONE_DEVICE, self.WALKS_GRADIENTS)
        if not problem:
            return "triton"
        return fall_back(self.impl, ValueError(f"impl='triton' cannot run: {problem}"), type(self).__name__)

    def groups_to_step(self) -> list:
        """(group, its params with a gradient, the impl that steps them) for every group: each param
        checked as torch checks it, and every impl chosen, before any group changes."""
        name = type(self).__name__
        stepped = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if torch.is_complex(p):  # torch's words and type
                    raise RuntimeError(f"{name} does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError(f"{name} does not support sparse gradients")
            stepped.append((group, params, self.chosen_impl(params)))
        return stepped

    def check_quantized_states(self, params) -> None:
        """With a quantized ``state_dtype``: plain tensors only (a quantization block would straddle FSDP2's
        shards) unless the class steps such params whole, and any existing codes and scales of ``QUANTIZED_STATE`` as this step would make them (a
        checkpoint's), checked before any group changes."""
        name = type(self).__name__
        for i, p in enumerate(params):
            if isinstance(p, DTensor) and not (self.QUANTIZED_SHARDS_STEP_WHOLE or self.QUANTIZED_PER_SHARD):
                raise ValueError(f"{name}: state_dtype={self.state_dtype!r} is not supported for FSDP2 (DTensor) "
                                 f"params (param {i} is one): a quantization block would straddle the shards. Use "
                                 "state_dtype=None")
            if self.QUANTIZED_STATE in self.state.get(p, {}):
                shard = local(p) if self.QUANTIZED_PER_SHARD else p
                check_quantized_state(name, self.QUANTIZED_STATE, self.state[p], shard, self.state_dtype, f"param {i}")

    def load_state_dict(self, state_dict):
        """torch's load, then a quantized state's codes and scales (``QUANTIZED_STATE``, where ``state_dtype``
        is int8 or int4) in their saved dtypes: torch casts every state of a floating param to the param's
        dtype, the int8 codes included, and would round a bf16 param's fp32 scales."""
        super().load_state_dict(state_dict)
        if self.state_dtype is None:
            return
        kept = (self.QUANTIZED_STATE, scale_name(self.QUANTIZED_STATE))
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, param in zip(saved_ids, params):
            for name, value in state_dict["state"].get(saved_id, {}).items():
                if name in kept:
                    self.state[param][name] = value.to(device=param.device, copy=True).contiguous()

    def __getstate__(self):
        """torch's state (defaults, state, param groups) and the impl option, so that a deepcopy or a pickle
        steps with the impl of the original."""
        return {**super().__getstate__(), "_impl": self._impl}

    def __setstate__(self, state):
        super().__setstate__(state)
        drop_switches(self.param_groups)  # torch's switches, in a torch checkpoint: the impl decides here


class StepAsOneOp(UnregisteredOptimizer):
    """An optimizer whose ``step(closure=None)`` compiles as one opaque op: under torch.compile the
    traced step is one call of ``triton_optim::step`` (``optim.ops``) with this optimizer's key and
    params, and the op runs the eager step (``_eager_step``, each subclass's) at run time. So
    ``torch.compile(optimizer.step, fullgraph=True)`` has no graph break, a cold start (the state made
    inside the op) compiles once, and no lr, float or tensor, is a constant of the graph: changing it
    never recompiles. The closure, if any, runs before the op, as the eager step runs it."""

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        self._register_params()

    def __setstate__(self, state):
        super().__setstate__(state)
        self._register_params()  # a copy: its own key and list

    def _register_params(self):
        # Every param in group order, as a list of its own: what a compiled step hands its op (the traced
        # step then reads no param group, whose float lr dynamo would guard on); and this optimizer's key
        # for the op (``optim.ops``).
        self._params = [p for group in self.param_groups for p in group["params"]]
        if "_key" not in self.__dict__:
            self._key = ops.register(self._step_from_op)

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every group; returns ``closure()``'s loss where a closure is given. Under
        torch.compile the step is one opaque op that runs this eager step at run time."""
        loss = closure_loss(closure)
        if torch.compiler.is_compiling():
            ops.step(self._key, self._params)
        else:
            self._eager_step()
        return loss

    def _step_from_op(self, params, inv_scale, found_inf):
        # inv_scale and found_inf are None: GradScaler unscales these classes' gradients and skips an
        # overflow step itself (no _step_supports_amp_scaling), as it does torch's twins.
        if not same_objects(params, [p for group in self.param_groups for p in group["params"]]):
            raise RuntimeError(f"{type(self).__name__}: the compiled step handed its op other tensors than the "
                               "optimizer's params; it would update copies. Compile optimizer.step as a whole")
        with torch.no_grad():
            self._eager_step()

    def _eager_step(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _eager_step, its step without the closure")


def shaped_class(rule, engine: type, options: dict, keyword_only: dict = None, **namespace) -> type:
    """The class of one rule of another shape, made from its declaration: its signature (``params``, the
    rule's arguments, then its ``keyword_only`` ones and the engine's ``options`` after a ``*``), its help
    (``rule.doc``), on its shape's ``engine``, whose ``__init__(params, arguments, **options)`` checks and
    does the rest; ``namespace`` adds the class attributes the engine reads (``STATE``...)."""
    signature = class_signature(rule.defaults, {**(keyword_only or {}), **options})

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        params, chosen = arguments.pop("params"), {name: arguments.pop(name) for name in options}
        engine.__init__(self, params, arguments, **chosen)

    __init__.__signature__ = signature
    return type(rule.name, (engine,), {"rule": rule, "DEFAULTS": dict(rule.defaults), "__init__": __init__,
                                       "__doc__": rule.doc, "__module__": "fusedoptim.optim", "__qualname__": rule.name,
                                       **namespace})
