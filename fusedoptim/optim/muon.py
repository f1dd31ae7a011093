"""``Muon``: torch.optim.Muon's twin, with its arguments, defaults and state (a state_dict loads both
ways). Its equations are the oracle's (``optim.reference.muon``).

A Muon step is three stages, and the fused impl keeps them apart:

1. element-wise, the momentum: one launch of the multi-tensor launcher (``kernels.muon.momentum``)
   over every param of the group updates each momentum buffer and writes the matrix U to
   orthogonalize into a stack of the params of its shape;
2. per shape, the matrix transform: Newton–Schulz on the stack (``kernels.newton_schulz``: one
   launch per matrix product for every matrix of that shape), into a second stack O;
3. element-wise, the apply: one launch (``kernels.muon.apply_update``) θ ← (1 − γλ)θ − γ'·O.

Muon is a rule of the matrix shape (its row: ``optim.registry.SHAPED_RULES``, not generated into a
class yet); its interface is the class: ``Muon.DEFAULTS``, ``Muon.IMPLS``, ``Muon.STATE``
and ``chosen_impl(params)`` (``optim.unregistered``'s, with the ``impl`` option). Its step compiles
as one opaque op (``optim.unregistered.StepAsOneOp``).
"""
import numbers

import torch
from torch.distributed.tensor import DTensor

from fusedoptim.kernels import muon as kernels
from fusedoptim.kernels.launcher import prepare_launches
from fusedoptim.kernels.newton_schulz import newton_schulz
from fusedoptim.kernels.slots import TRITON_DTYPES, QuantizedStates, TensorSlots
from fusedoptim.optim.matrix_shards import ShardedMatrices, sharded_matrix_problem
from fusedoptim.optim.quantization import (FORMATS, QUANTIZED_DTYPES, STOCHASTIC, UNSIGNED, dequantize, new_codes,
                                           quantize, quantize_constant, scale_name, scale_numel)
from fusedoptim.optim.reference.muon import adjusted_lr, muon
from fusedoptim.optim.rounding import stochastic_round
from fusedoptim.optim.shards import local, shard_range
from fusedoptim.optim.unregistered import StepAsOneOp

DEFAULT_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan's quintic, torch's defaults
# The momentum buffer's quantization scheme (optim.quantization): a momentum, so "signed" (linear absmax,
# round to nearest), as the registry's momenta declare it.
MOMENTUM_KIND = "signed"


def muon_state_bytes(group, shapes, param_dtype) -> int:
    """Bytes of state kept for matrices of these shapes: a momentum buffer each, in the param's dtype."""
    return sum(torch.Size(shape).numel() for shape in shapes) * torch.empty((), dtype=param_dtype).element_size()


class Muon(StepAsOneOp):
    """Muon (Jordan et al. 2024), torch.optim.Muon's twin: momentum, orthogonalized by Newton–Schulz
    iterations, for 2-D params only (use a second optimizer, e.g. fo.AdamW, for biases, norms and
    embeddings). Its equations: ``fusedoptim.optim.reference.muon``.

    lr=1e-3: γ; a float or a 1-element tensor (read on the host at each step, as torch's).
    weight_decay=0.1: λ, decoupled: θ ← (1 − γλ)θ.
    momentum=0.95: μ.
    nesterov=True: orthogonalize (1 − μ)g + μB instead of B.
    ns_coefficients=(3.4445, -4.7750, 2.0315): (a, b, c) of the quintic X ← aX + (bA + cA²)X.
    eps=1e-7: the norm that X is divided by first is at least ε.
    ns_steps=5: Newton–Schulz iterations, 0 to 99.
    adjust_lr_fn=None: None or "original" scales γ by √max(1, rows/cols); "match_rms_adamw" by
        0.2·√max(rows, cols) (Liu et al. 2025).
    impl="auto" (keyword-only): "reference" runs the oracle (torch's ops); "triton" the momentum and
        the apply as multi-tensor launches and Newton–Schulz as the Triton kernels (fp32, bf16 or fp16
        contiguous params on a CUDA device, or the CPU with TRITON_INTERPRET=1); "auto" the kernels
        where they run, the reference elsewhere. Settable on a built optimizer, checked.
    state_dtype=None (keyword-only): None keeps the momentum buffer in the param's dtype, as torch;
        "int8" or "int4" keeps it as codes (``state["momentum_buffer"]``) and fp32 scales
        (``state["momentum_buffer_scale"]``), the registry's "signed" scheme (``optim.quantization``),
        in both impls. Not for FSDP2 (DTensor) params.
    stochastic_rounding=False (keyword-only): bf16 and fp16 params are stored rounded stochastically
        (unbiased) by the apply, reproducibly from ``seed``, so that updates below half a unit still move
        them on average; the momentum buffer rounds to nearest, as torch's.
    seed=0 (keyword-only): the seed of stochastic rounding's random bits, an integer in [0, 2**31).
    """

    DEFAULTS = dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=DEFAULT_COEFFICIENTS,
                    eps=1e-7, ns_steps=5, adjust_lr_fn=None)
    FUSED_DTYPES = tuple(TRITON_DTYPES)
    ONE_DEVICE = False  # a Newton–Schulz stack per (shape, dtype, device); the factors copied to each device
    QUANTIZED_STATE = "momentum_buffer"
    STATE = ("momentum_buffer",)
    ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
    # As for torch.optim.Muon: GradScaler.step unscales the gradients itself (one foreach op) and skips the
    # step on an inf or NaN, so a skipped step touches neither θ nor the momentum.
    _step_supports_amp_scaling = False

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=DEFAULT_COEFFICIENTS, eps=1e-7, ns_steps=5, adjust_lr_fn=None, *, impl="auto", state_dtype=None,
                 stochastic_rounding=False, seed=0):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:  # torch's checks first, with its words
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        if adjust_lr_fn not in self.ADJUST_LR_FNS:
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported; use one of "
                             f"{self.ADJUST_LR_FNS}")
        # torch refuses these at the first step, or never: here at construction, before anything runs.
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, numbers.Integral) or not 0 <= ns_steps < 100:
            raise ValueError(f"Muon: ns_steps={ns_steps!r} must be an integer from 0 to 99")
        if len(ns_coefficients) != 3 or not all(isinstance(v, numbers.Real) for v in ns_coefficients):
            raise ValueError(f"Muon: ns_coefficients={ns_coefficients!r} must be three numbers (a, b, c)")
        if not isinstance(eps, numbers.Real) or not eps >= 0:
            raise ValueError(f"Muon: eps={eps!r} must be a number ≥ 0")
        if state_dtype is not None and state_dtype not in QUANTIZED_DTYPES:
            raise ValueError(f"Muon: state_dtype={state_dtype!r} is not supported; use None (the param's dtype, as "
                             f"torch) or one of {QUANTIZED_DTYPES} (quantized momentum)")
        if not isinstance(stochastic_rounding, bool):
            raise ValueError(f"Muon: stochastic_rounding={stochastic_rounding!r} must be True or False")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**31:
            raise ValueError(f"Muon: seed={seed!r} must be an integer in [0, 2**31)")
        self.impl = impl
        self.state_dtype = state_dtype
        self.stochastic_rounding, self.seed = stochastic_rounding, seed
        # As the registry's runtime (optim.runtime.Runtime): per device, the launcher's seed tensor (the seed
        # above bit 32, launches counted below); the reference's bits from a CPU generator.
        self._rounding_seeds = {}
        self._generator = torch.Generator().manual_seed(seed)
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()} "
                        f"(param {i} of group {g}). Give the matrices to Muon and the other params (biases, norms, "
                        "embeddings...) to a second optimizer, e.g. fo.AdamW([p for p in model.parameters() if "
                        "p.ndim != 2]), stepping both")

    def __getstate__(self):
        """The options, and the rounding's counts and generator, so that a copy rounds as the original."""
        return {**super().__getstate__(), "state_dtype": self.state_dtype,
                "stochastic_rounding": self.stochastic_rounding, "seed": self.seed,
                "_rounding_seeds": self._rounding_seeds, "_generator_state": self._generator.get_state()}

    def __setstate__(self, state):
        generator_state = state.pop("_generator_state", None)
        super().__setstate__(state)
        # torch's load_state_dict calls this with state and groups alone: the options stay; a copy pickled
        # before an option existed gets its default.
        self.__dict__.setdefault("state_dtype", None)
        for name, default in (("stochastic_rounding", False), ("seed", 0), ("_rounding_seeds", {})):
            self.__dict__.setdefault(name, default)
        if generator_state is not None or not hasattr(self, "_generator"):
            self._generator = torch.Generator().manual_seed(self.seed)
            if generator_state is not None:
                self._generator.set_state(generator_state)

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
            problem = sharded_matrix_problem(params, "Muon")
            if problem:
                raise ValueError(problem)
            if self.state_dtype is not None:
                self.check_quantized_states(params)
        for group, params, impl in stepped:
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if "momentum_buffer" not in state:  # a DTensor placed as its param for an FSDP2 param
                    self._make_momentum(p, state)
            if impl == "reference":
                _reference_step(params, states, group, self.state_dtype,
                                self._generator if self.stochastic_rounding else None)
            elif params:
                self._fused_step(params, states, group)

    def _make_momentum(self, param, state):
        """The momentum buffer, zero: in the gradient's dtype and layout, or as codes and scales of zero."""
        if self.state_dtype is None:
            state["momentum_buffer"] = torch.zeros_like(param.grad, memory_format=torch.preserve_format)
            return
        codes = new_codes(param, self.state_dtype)
        scales = torch.empty(scale_numel(param.numel(), self.state_dtype), dtype=torch.float32, device=param.device)
        quantize_constant(0.0, MOMENTUM_KIND, codes, scales, param.numel())
        state["momentum_buffer"], state[scale_name("momentum_buffer")] = codes, scales

    def _fused_step(self, params, states, group):
        """The three stages of the module docstring, for one group. An FSDP2 param's momentum and apply
        step its local shard; its Newton–Schulz runs on one rank, whole (``optim.matrix_shards``)."""
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
        momentum_slots = [TensorSlots(param=u, grad=local(p.grad), states=(local(s["momentum_buffer"]),),
                                      scales=(s[scale_name("momentum_buffer")],) if quantized else ())
                          for u, p, s in zip(updates, params, states) if u.numel()]
        quantization, count = None, None
        if quantized:
            fmt = FORMATS[self.state_dtype]
            quantization = QuantizedStates(fmt.bits, fmt.block, (UNSIGNED[MOMENTUM_KIND],), (STOCHASTIC[MOMENTUM_KIND],))
            # The codes' random key: signed codes round to nearest and draw nothing, so any count serves.
            count = torch.zeros((), dtype=torch.int64)
        for _, launch in prepare_launches(momentum_slots, "muon", quantization):
            # stage 1: B, and U into the stacks
            launch.update(kernels.momentum, None, hyper, flags, quantization_count=count)
        sharded.gather(wholes)
        for stack in stacks.values():  # stage 2: O = NS_k(U), one stack per shape, in place
            newton_schulz(stack, stack, group["ns_coefficients"], group["ns_steps"], group["eps"])
        sharded.scatter(wholes)
        updates = [sharded.received(i) if i in sharded else wholes[i] for i in range(len(params))]
        # Per tensor: (1 − γλ, γ'), as torch's mul_ and add_ take them (fp32 of the double).
        factors = torch.tensor([[1 - lr * group["weight_decay"], adjusted_lr(lr, group["adjust_lr_fn"], p.shape)]
                                for p in params], dtype=torch.float32)
        on_device = {device: factors.to(device) for device in {local(p).device for p in params}}
        apply_slots = [TensorSlots(param=local(p), grad=o, scalars=(on_device[local(p).device][i, 0],
                                                                    on_device[local(p).device][i, 1]))
                       for i, (p, o) in enumerate(zip(params, updates)) if o.numel()]
        for _, launch in prepare_launches(apply_slots, "muon"):  # stage 3: θ ← (1 − γλ)θ − γ'·O
            launch.update(kernels.apply_update, None, (), (), self._rounding_seed(launch.device))


def full_precision(theta, generator):
    """θ for the oracle to step: with stochastic rounding (``generator``), a 16-bit θ's fp32 copy, which
    ``rounded_back`` stores rounded stochastically, as the registry's reference does
    (``optim.runtime.Runtime.reference_step``); else θ itself, stepped in place."""
    return theta.float() if generator is not None and theta.dtype in (torch.bfloat16, torch.float16) else theta


def rounded_back(full, theta, generator):
    """``full_precision``'s copy, stepped, to θ's dtype: rounded stochastically, or θ itself."""
    return theta if full is theta else stochastic_round(full, theta.dtype, generator)


def _reference_step(params, states, group, state_dtype=None, generator=None):
    """The oracle's step. FSDP2 params are stepped whole on every rank: θ, g and B gathered (an all-gather
    each), the oracle run on the whole tensors (the same inputs and ops on every rank as in one process,
    so the same bits), and each rank's rows of θ and B written back. The oracle stays a per-tensor loop
    over plain tensors; the fused impl is the one that spreads Newton–Schulz over the ranks. ``generator``:
    None rounds θ to nearest, as torch; a CPU generator rounds 16-bit θ stochastically from its bits."""
    if state_dtype is not None:
        _quantized_reference_step(params, states, group, generator)
        return

    def whole(tensor):
        return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor

    wholes = [whole(p) for p in params]
    thetas = [full_precision(w, generator) for w in wholes]
    whole_states = [{"momentum_buffer": whole(state["momentum_buffer"])} for state in states]
    muon(thetas, [whole(p.grad) for p in params], whole_states, group)
    for p, w, theta, state, whole_state in zip(params, wholes, thetas, states, whole_states):
        theta = rounded_back(theta, w, generator)
        if isinstance(p, DTensor):
            _, first, length = shard_range(p)
            local(p).copy_(theta.narrow(0, first, length))
            local(state["momentum_buffer"]).copy_(whole_state["momentum_buffer"].narrow(0, first, length))
        elif theta is not w:
            p.copy_(theta)


def _quantized_reference_step(params, states, group, generator=None):
    """The oracle on the momentum's fp32 values, laid out as the params, quantized back after with the
    kernel's scheme, as the registry's reference does (``optim.runtime.Runtime.reference_step``). The
    gradients go in fp32 too: the kernel computes B and U in fp32 from the codes and g, then stores U in
    the param's dtype, which Newton–Schulz rounds to bf16 as the oracle's fp32 U is."""
    buffer_scale = scale_name("momentum_buffer")
    full_states = [{"momentum_buffer": dequantize(state["momentum_buffer"], state[buffer_scale], MOMENTUM_KIND, p)}
                   for p, state in zip(params, states)]
    thetas = [full_precision(p, generator) for p in params]
    muon(thetas, [p.grad.float() for p in params], full_states, group)
    for p, theta in zip(params, thetas):
        if theta is not p:
            p.copy_(rounded_back(theta, p, generator))
    for state, full_state in zip(states, full_states):
        quantize(full_state["momentum_buffer"], MOMENTUM_KIND, state["momentum_buffer"], state[buffer_scale])
