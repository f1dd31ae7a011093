"""The engine of the matrix shape (``optim.matrix_rule.MatrixRule``): the class of each matrix rule, made
from its declaration (``matrix_optimizer``). A step of a matrix rule is three stages, and the fused impl
keeps them apart:

1. element-wise, the momentum: one launch of the multi-tensor launcher (``kernels.muon.momentum``)
   over every param of the group updates each momentum buffer and writes the matrix U to transform
   into a stack of the params of its shape;
2. per shape, the rule's matrix transform (Muon's Newton–Schulz) on the stack, in place: O = T(U);
3. element-wise, the apply: one launch (``kernels.muon.apply_update``) θ ← (1 − γλ)θ − γ'·O, with the
   rule's γ' for the matrix's shape.

The rule declares its arguments, their checks, the transform and its oracle, γ' and its whole-step
oracle; the engine does the rest for every matrix rule: param groups and state, the impl, FSDP2's
shards (one owner rank transforms each whole matrix: ``optim.matrix_shards``), GradScaler and
torch.compile (``optim.unregistered.StepAsOneOp``), an int8/int4 momentum, stochastic rounding, split master weights (the apply steps θ's fp32 master: θ and its residual), and
checkpoints. The reference impl: ``optim.matrix_reference``.

An int8/int4 momentum of an FSDP2 param is kept as the registry keeps quantized states
(``optim.saved_states``): where a row of the matrix is a whole number of blocks, each rank codes its
shard, whose blocks are then the whole tensor's, and ``state_dict`` shows them as DTensors for
torch.distributed.checkpoint; otherwise every rank keeps the whole momentum's codes and steps them
from the whole gradient (an all-gather), sending its rows of U on as any shard's. Either way the codes
are those of one process on the whole matrix, whatever the mesh.
"""
import numbers

import torch
from torch.distributed.tensor import DTensor

from fusedoptim.kernels import muon as kernels
from fusedoptim.kernels.launcher import prepare_launches
from fusedoptim.kernels.slots import TRITON_DTYPES, QuantizedStates, TensorSlots
from fusedoptim.kernels.master_weights import RESIDUAL_DTYPES
from fusedoptim.optim.matrix_reference import MOMENTUM, MOMENTUM_KIND, reference_step
from fusedoptim.optim.matrix_shards import ShardedMatrices, sharded_matrix_problem
from fusedoptim.optim.quantization import (FORMATS, QUANTIZED_DTYPES, STOCHASTIC, UNSIGNED, new_codes,
                                           quantize_constant, scale_name, scale_numel)
from fusedoptim.optim.saved_states import saved_view, stepped_whole, to_local
from fusedoptim.optim.shards import local, shard_range
from fusedoptim.optim.states import MASTER_RESIDUAL, local_states, make_residual
from fusedoptim.optim.unregistered import StepAsOneOp, shaped_class
from fusedoptim.optim.validation import (check_master_param, check_master_weight_bits, check_quantized_state,
                                         check_saved_residual, check_state)

# MOMENTUM, the shape's one state (torch.optim.Muon's name), and MOMENTUM_KIND, its quantization scheme
# (a momentum, so "signed": linear absmax, round to nearest, as the registry's momenta declare it), are
# the reference's (optim.matrix_reference). The shape's keyword-only options, after the rule's arguments:
OPTIONS = dict(impl="auto", state_dtype=None, stochastic_rounding=False, seed=0, master_weight_bits=None)


def matrix_optimizer(rule) -> type:
    """The class of one matrix rule: its signature (``params``, the rule's arguments, then ``OPTIONS``
    after a ``*``), its docstring, its checks at construction, on ``MatrixOptimizer``."""
    return shaped_class(rule, MatrixOptimizer, OPTIONS)


def check_shape_arguments(arguments) -> None:
    """The arguments every matrix rule has, checked as torch.optim.Muon checks them, with its words."""
    lr = arguments["lr"]
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 <= arguments["momentum"]:
        raise ValueError(f"momentum should be >= 0 but is: {arguments['momentum']}")
    if not 0.0 <= arguments["weight_decay"]:
        raise ValueError(f"weight decay should be >= 0 but is: {arguments['weight_decay']}")


class MatrixOptimizer(StepAsOneOp):
    """The base of every matrix rule's class (``matrix_optimizer``): ``rule`` is its declaration."""

    rule = None
    FUSED_DTYPES = tuple(TRITON_DTYPES)
    ONE_DEVICE = False  # a stack per (shape, dtype, device); the factors copied to each device
    QUANTIZED_STATE = MOMENTUM
    STATE = (MOMENTUM,)
    # As for torch.optim.Muon: GradScaler.step unscales the gradients itself (one foreach op) and skips the
    # step on an inf or NaN, so a skipped step touches neither θ nor the momentum.
    _step_supports_amp_scaling = False

    def __init__(self, params, arguments, impl="auto", state_dtype=None, stochastic_rounding=False, seed=0,
                 master_weight_bits=None):
        name = self.rule.name
        check_shape_arguments(arguments)  # torch's checks first, then the rule's own
        arguments = self.rule.checked(arguments)
        if state_dtype is not None and state_dtype not in QUANTIZED_DTYPES:
            raise ValueError(f"{name}: state_dtype={state_dtype!r} is not supported; use None (the param's dtype, as "
                             f"torch) or one of {QUANTIZED_DTYPES} (quantized momentum)")
        if not isinstance(stochastic_rounding, bool):
            raise ValueError(f"{name}: stochastic_rounding={stochastic_rounding!r} must be True or False")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**31:
            raise ValueError(f"{name}: seed={seed!r} must be an integer in [0, 2**31)")
        check_master_weight_bits(name, master_weight_bits, stochastic_rounding)
        self.impl = impl
        self.master_weight_bits = master_weight_bits
        self.state_dtype = state_dtype
        self.stochastic_rounding, self.seed = stochastic_rounding, seed
        # As the registry's runtime (optim.runtime.Runtime): per device, the launcher's seed tensor (the seed
        # above bit 32, launches counted below); the reference's bits from a CPU generator.
        self._rounding_seeds = {}
        self._generator = torch.Generator().manual_seed(seed)
        super().__init__(params, arguments)
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.ndim != 2:
                    raise ValueError(
                        f"{name} only supports 2D parameters whereas we found a parameter with size: {p.size()} "
                        f"(param {i} of group {g}). Give the matrices to {name} and the other params (biases, norms, "
                        "embeddings...) to a second optimizer, e.g. fo.AdamW([p for p in model.parameters() if "
                        "p.ndim != 2]), stepping both")


    def __getstate__(self):
        """The options, and the rounding's counts and generator, so that a copy rounds as the original."""
        return {**super().__getstate__(), "state_dtype": self.state_dtype, "master_weight_bits": self.master_weight_bits,
                "stochastic_rounding": self.stochastic_rounding, "seed": self.seed,
                "_rounding_seeds": self._rounding_seeds, "_generator_state": self._generator.get_state()}

    def __setstate__(self, state):
        generator_state = state.pop("_generator_state", None)
        super().__setstate__(state)
        # torch's load_state_dict calls this with state and groups alone: the options stay; a copy pickled
        # before an option existed gets its default.
        self.__dict__.setdefault("state_dtype", None)
        for name, default in (("stochastic_rounding", False), ("seed", 0), ("_rounding_seeds", {}),
                              ("master_weight_bits", None)):
            self.__dict__.setdefault(name, default)
        if generator_state is not None or not hasattr(self, "_generator"):
            self._generator = torch.Generator().manual_seed(self.seed)
            if generator_state is not None:
                self._generator.set_state(generator_state)

    def load_state_dict(self, state_dict):
        """torch's load, then each master residual as saved (torch casts every state of a floating param to
        its dtype: an int16 residual would become bf16): into an optimizer of the width it was saved with;
        one without masters drops it (θ, the 16-bit param, is then the master); another width refuses it,
        before any change, with the registry's words."""
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        residuals = [state_dict["state"].get(i, {}).get(MASTER_RESIDUAL) for i in saved_ids]
        for position, residual in enumerate(residuals):
            check_saved_residual(self.rule.name, f"the state of param {position} (in the order of the param groups)",
                                 residual, self.master_weight_bits)
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        if self.state_dtype is not None:  # the codes and scales in the rank's own form (state_dict's DTensors)
            names = (MOMENTUM, scale_name(MOMENTUM))
            for param in params:
                kept = {name: value for name, value in self.state[param].items() if name in names}
                self.state[param].update(to_local(local_states(kept), {MOMENTUM: MOMENTUM_KIND}))
        for param, residual in zip(params, residuals):
            if residual is not None and self.master_weight_bits is None:
                del self.state[param][MASTER_RESIDUAL]
            elif residual is not None:
                self.state[param][MASTER_RESIDUAL] = residual.to(device=param.device, copy=True)

    def _rounding_seed(self, device):
        """None (round to nearest), or this device's stochastic-rounding seed tensor for the launcher."""
        if not self.stochastic_rounding:
            return None
        if device not in self._rounding_seeds:
            self._rounding_seeds[device] = torch.tensor(self.seed << 32, dtype=torch.int64, device=device)
        return self._rounding_seeds[device]

    def _eager_step(self):
        stepped = self.groups_to_step()
        for _, params, _ in stepped:  # FSDP2's layout checked in every group before any group changes
            problem = sharded_matrix_problem(params, self.rule.name)
            if problem:
                raise ValueError(problem)
            if self.state_dtype is not None:
                self.check_quantized_states(params)
            if self.master_weight_bits is not None:
                self._check_masters(params)
        for group, params, impl in stepped:
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if MOMENTUM not in state:  # a DTensor placed as its param for an FSDP2 param
                    self._make_momentum(p, state)
                if self.master_weight_bits is not None:
                    make_residual(p, state, self.master_weight_bits)  # placed as its param, as the momentum
            if impl == "reference":
                reference_step(self.rule.reference, params, states, group, self.state_dtype,
                               self._generator if self.stochastic_rounding else None)
            elif params:
                self._fused_step(params, states, group)

    def check_quantized_states(self, params) -> None:
        """Any codes and scales of the momentum (a checkpoint's) as this step would make them: of the local
        shard, or of the whole param where every rank keeps the whole momentum (``stepped_whole``)."""
        for i, p in enumerate(params):
            if MOMENTUM in self.state.get(p, {}):
                like = p if stepped_whole(p, self.state_dtype) else local(p)
                check_quantized_state(self.rule.name, MOMENTUM, self.state[p], like, self.state_dtype, f"param {i}")

    def state_dict(self):
        """torch's, an FSDP2 param's momentum codes and scales of whole blocks shown as DTensors of the
        whole tensor's (``saved_view``): torch.distributed.checkpoint saves each rank's part and reshards
        them. Whole codes, the same on every rank, stay plain: saved once."""
        state_dict = super().state_dict()
        params = [p for group in self.param_groups for p in group["params"]]
        for index, state in state_dict["state"].items():
            state_dict["state"][index] = saved_view(params[index], state, (MOMENTUM,), self.state_dtype)
        return state_dict

    def _check_masters(self, params):
        """Split master weights complete bf16 and fp16 params, each with a residual (a checkpoint's) as the
        step would make it: the registry's checks and words, before any group changes."""
        for i, p in enumerate(params):
            check_master_param(self.rule, p, f"param {i}", self.master_weight_bits)
            if MASTER_RESIDUAL in self.state.get(p, {}):
                check_state(self.rule.name, MASTER_RESIDUAL, local(self.state[p][MASTER_RESIDUAL]), local(p),
                            RESIDUAL_DTYPES[self.master_weight_bits], f"param {i}")

    def _make_momentum(self, param, state):
        """The momentum buffer, zero: in the gradient's dtype and layout, or as codes and scales of zero
        (an FSDP2 param's: plain tensors of its local shard, or of the whole param where every rank keeps
        it whole: ``stepped_whole``; ``state_dict`` shows the former as DTensors)."""
        if self.state_dtype is None:
            state["momentum_buffer"] = torch.zeros_like(param.grad, memory_format=torch.preserve_format)
            return
        if stepped_whole(param, self.state_dtype):  # codes of the whole tensor, on every rank
            param = torch.empty(param.shape, dtype=torch.int8, device=local(param).device)
        param = local(param)
        codes = new_codes(param, self.state_dtype)
        scales = torch.empty(scale_numel(param.numel(), self.state_dtype), dtype=torch.float32, device=param.device)
        quantize_constant(0.0, MOMENTUM_KIND, codes, scales, param.numel())
        state["momentum_buffer"], state[scale_name("momentum_buffer")] = codes, scales

    def _fused_step(self, params, states, group):
        """The three stages of the module docstring, for one group. An FSDP2 param's momentum and apply
        step its local shard; its transform runs on one rank, whole (``optim.matrix_shards``)."""
        lr = float(group["lr"])  # torch's _to_scalar: read on the host
        sharded = ShardedMatrices(params)
        shapes: dict = {}  # (shape, dtype, device) -> indices of the matrices this rank orthogonalizes whole
        for i, p in enumerate(params):
            if sharded.owns(i):
                shapes.setdefault((p.shape, p.dtype, local(p).device), []).append(i)
        stacks = {key: torch.empty((len(members), *key[0]), dtype=key[1], device=key[2])
                  for key, members in shapes.items()}
        wholes = {i: stacks[key][j] for key, members in shapes.items() for j, i in enumerate(members)}
        # Where stage 1 writes U: a whole matrix's slot in its stack, or a shard's rows to send to the owner.
        updates = [sharded.rows_to_send(i) if i in sharded else wholes[i] for i in range(len(params))]
        hyper = kernels.MomentumHyper(group["momentum"], 1 - group["momentum"])
        flags = kernels.MomentumFlags(bool(group["nesterov"]))
        quantized = self.state_dtype is not None
        # A momentum kept whole is stepped whole on every rank, from the whole gradient, into a whole U
        # whose rows this rank sends on (even with no rows of its own: every rank's codes stay alike).
        whole_updates = {i: torch.empty(p.shape, dtype=p.dtype, device=local(p).device)
                         for i, p in enumerate(params) if stepped_whole(p, self.state_dtype)}
        momentum_slots = [TensorSlots(param=whole_updates.get(i, u),
                                      grad=p.grad.full_tensor() if i in whole_updates else local(p.grad),
                                      states=(local(s["momentum_buffer"]),),
                                      scales=(s[scale_name("momentum_buffer")],) if quantized else ())
                          for i, (u, p, s) in enumerate(zip(updates, params, states))
                          if u.numel() or i in whole_updates]
        quantization, count = None, None
        if quantized:
            fmt = FORMATS[self.state_dtype]
            quantization = QuantizedStates(fmt.bits, fmt.block, (UNSIGNED[MOMENTUM_KIND],), (STOCHASTIC[MOMENTUM_KIND],))
            # The codes' random key: signed codes round to nearest and draw nothing, so any count serves.
            count = torch.zeros((), dtype=torch.int64)
        for _, launch in prepare_launches(momentum_slots, "muon", quantization):
            # stage 1: B, and U into the stacks
            launch.update(kernels.momentum, None, hyper, flags, quantization_count=count)
        for i, whole in whole_updates.items():
            updates[i].copy_(whole.narrow(0, *shard_range(params[i])[1:]))
        sharded.gather(wholes)
        for stack in stacks.values():  # stage 2: O = T(U), one stack per shape, in place
            self.rule.transform(stack, group)
        sharded.scatter(wholes)
        updates = [sharded.received(i) if i in sharded else wholes[i] for i in range(len(params))]
        # Per tensor: (1 − γλ, γ'), as torch's mul_ and add_ take them (fp32 of the double).
        factors = torch.tensor([[1 - lr * group["weight_decay"], self.rule.adjusted_lr(lr, group, p.shape)]
                                for p in params], dtype=torch.float32)
        on_device = {device: factors.to(device) for device in {local(p).device for p in params}}
        masters = self.master_weight_bits is not None  # the apply reads and writes θ's fp32 master
        apply_slots = [TensorSlots(param=local(p), grad=o, scalars=(on_device[local(p).device][i, 0],
                                                                    on_device[local(p).device][i, 1]),
                                   residual=local(states[i][MASTER_RESIDUAL]) if masters else None)
                       for i, (p, o) in enumerate(zip(params, updates)) if o.numel()]
        for _, launch in prepare_launches(apply_slots, "muon"):  # stage 3: θ ← (1 − γλ)θ − γ'·O
            launch.update(kernels.apply_update, None, (), (), self._rounding_seed(launch.device))
