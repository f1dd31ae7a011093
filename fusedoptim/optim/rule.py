"""What a registry row is (``optim.registry`` holds the rows): a rule's declaration — its math, its
oracle, its hyperparameters and states, the capabilities the generic code reads — and what follows
from it: the kernel's arguments for a param group, the states a group keeps, and the bytes per param
of params, gradients and states in any precision (the memory model the profiles measure against).
"""
import collections
import functools
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from fusedoptim.kernels.master_weights import RESIDUAL_DTYPES
from fusedoptim.optim.quantization import FORMATS, is_quantized, scale_numel

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class State:
    """One element-wise state tensor, shaped like its param."""

    name: str
    # When the state exists: always (None), while a group key is truthy ("amsgrad", "momentum": torch
    # keeps no momentum buffer for momentum 0), or while a predicate of the group holds.
    when: Union[None, str, Callable] = None
    # A predicate's condition in words, for the rule sheet (docs/rules.md): "momentum > 0". A group key
    # needs none: the sheet writes the key.
    when_text: str = ""
    # Its value before the first step: a number, the group key holding the number
    # ("initial_accumulator_value"), or FIRST_STEP: the rule's first step makes it (SGD's buffer is
    # the first gradient). The kernel then sees a compile-time flag, True on that first step.
    initial: Union[float, str] = 0.0
    # What its values are, which chooses its int8 scheme (optim.quantization): "signed" (momenta,
    # gradients), "nonnegative" (running means of squares), "accumulator" (a growing sum of squares),
    # "multiplicative" (positive step sizes changed by factors near 1).
    kind: str = "signed"
    # False where the update overwrites it without reading it (SGDHD's prev_grad, which only its reduce
    # reads): the byte model counts a write, not a read and a write.
    update_reads: bool = True
    # True where the update writes it from the declared sums (LARS's momentum holds trust-scaled steps):
    # on FSDP2 the shards' partial sums add in another order on each mesh, so its values, as θ's, may
    # differ in the last bits between meshes, and its int8/int4 codes by a unit where that rounds across.
    from_sums: bool = False

    def exists(self, group) -> bool:
        if self.when is None:
            return True
        return bool(self.when(group) if callable(self.when) else group[self.when])


FIRST_STEP = "made by the first step"


@dataclass(frozen=True)
class ScalarUpdate:
    """Scalar states a rule advances once per step for every param of a device at once, from the step
    the optimizer counted: ``function(group, step, *current values) -> new values``, on the packed fp32
    buffers (one op chain per device, no host sync, never one op per tensor), kept as they were on a
    step GradScaler skips (``optim.scalar_updates``)."""

    names: tuple  # the scalar states it sets, in the order of the function's values
    function: Callable
    # False: before the update, which reads the new values (NAdam's μ_1···μ_t); True: after it, which
    # reads them as the previous step left them (ASGD's η and μ, as torch advances them after its update).
    after_update: bool = False


@dataclass(frozen=True)
class Modes:
    """A train/eval switch of the params (Schedule-Free: y while training, x for evaluation): the class
    offers ``optimizer.train()`` and ``optimizer.eval()`` (``optim.modes``), each running its function,
    ``function(params, states, group)`` on fp32 copies of a group's params and their states (in place on
    the params), then setting the group key ``key``, a recorded hyperparameter saved with the groups. A
    step in eval mode is refused before any change."""

    train: Callable
    eval: Callable
    key: str = "train_mode"
    # The states the functions read: a param that has none of them yet (no step) is left as it is.
    reads: tuple = ()


@dataclass(frozen=True)
class Sum:
    """One sum the rule's update reads, over more than its own element: a norm, a count, a dot product.
    The rule's ``reduce`` returns its terms (one block per declared sum, in order); the framework
    allocates it, zeroes it each step, fills it in one multi-tensor reduce launch, adds up the shards'
    parts over FSDP2 ranks and hands it to the update as a trailing scalar (``optim.sums``)."""

    name: str
    of: str  # what it is a sum of, as the rule sheet prints it: "θ²", "1 where g is NaN", "β·g·g_prev"
    # The param-sized tensors its terms read ("param", "grad" or a state's name): the byte model counts
    # what the reduce launch reads, each tensor once whatever the number of sums.
    reads: tuple
    # What it sums over: "tensor" (a value per tensor: every FSDP2 shard of it), "row" (a value per row
    # of the last dimension: an embedding table's; a tensor's last sum only), or "group" (one value for
    # the param group); or a function (group, param) -> "tensor" or "row" (Tiger: rows for embeddings).
    over: Union[str, Callable] = "tensor"
    # A group sum added, once summed, into this group key's 0-d fp32 tensor, which the update then reads
    # (SGDHD's lr: α ← α + β·⟨g, g_prev⟩); the update's scalar holds its new value.
    into: Optional[str] = None
    # A scalar state that counts the steps where this tensor's sum is > 0 (Tiger's nan_skips).
    counts: Optional[str] = None
    # When the sum exists: always (None), or while a group key is truthy ("cautious"). Where none of a
    # group's sums exists, no reduce launch runs; the update finds only the existing ones, in order.
    when: Optional[str] = None
    # Divided by the tensor's element count (the whole param's, over its FSDP2 shards) once summed: a
    # mean (caution's fraction of agreeing elements). Over a tensor only.
    mean: bool = False

    def exists(self, group) -> bool:
        return self.when is None or bool(group[self.when])


def caution(reads: tuple, agrees: str = "the step agrees in sign with g") -> Sum:
    """Caution's sum (Liang et al. 2024, "Cautious Optimizers"), declared by each momentum rule with the
    ``cautious`` flag (``optim.hyperparameters.CAUTIOUS``): the fraction of a tensor's elements whose step
    agrees in sign with the gradient, which the step is divided by (``kernels.elementwise.cautious``).
    The rule's reduce returns ``agreement(step, g)`` from the same math its update runs; ``reads``: what
    that math reads; ``agrees``: what is compared, where it is not the whole step with g (its peer's choice)."""
    return Sum("agreement", f"1 where {agrees}", reads=reads, when="cautious",
               mean=True)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Kernel against reference, both fp32 math: they differ only by the order of fp32 operations (fused
# multiply-adds, exp2/log2 for beta ** step), a few ulps of fp32. Stored in half precision, such a
# difference can round the other way: one ulp of the storage dtype (bf16 2^-8 relative, fp16 2^-11),
# and over 7 steps the states can carry a few of those forward.
TOLERANCES = {
    torch.float32: Tolerance(atol=1e-6, rtol=1e-5),
    torch.bfloat16: Tolerance(atol=1e-2, rtol=2e-2),
    torch.float16: Tolerance(atol=2e-3, rtol=4e-3),
}


@dataclass(frozen=True)
class Rule:
    name: str  # the optimizer class's name
    summary: str  # one line: what the rule does, and its paper
    reference: Callable  # the oracle, rule(params, grads, states, group)
    hyperparameters: tuple  # its optim.hyperparameters.Hyperparameter declarations, in signature order
    states: tuple  # the element-wise State tensors
    # The @triton.jit math the shared launcher runs (kernels.launcher.Launch.update); None for a rule
    # without the "triton" impl, which no launch reads.
    update: Optional[Callable] = None
    # The impls that can run the rule, as torch's OptimizerInfo.supported_impls: a rule served by its
    # oracle alone (SparseAdam: it touches only the rows a sparse gradient holds) refuses impl="triton"
    # before any change, and impl="auto" takes the reference for it.
    impls: tuple = ("triton", "reference")
    scalar_states: tuple = ()  # per-param fp32 0-d tensors, e.g. "step"
    # A scalar state's value before the first step, where it is not 0: a number (NAdam's mu_product, a
    # running product: 1, as torch starts it) or the group key holding it, read when the state is made
    # (ASGD's eta starts at the lr of its first step, a number or a tensor, as torch starts it).
    scalar_initial: dict = field(default_factory=dict)
    # Scalar states advanced each step by torch ops on their packed buffers (ScalarUpdate): those no kernel
    # may write, since every program of a tensor reads them (NAdam's mu_product, ASGD's eta and mu).
    scalar_updates: tuple = ()
    # Constants per tensor its kernels read after its scalar states: (group, param, numel of the whole
    # param) -> a tuple of numbers, laid out once per plan (Tiger's class of tensor: lr constant, 1/(elements
    # per RMS), decay multiplier, NaN center).
    tensor_constants: Optional[Callable] = None
    # The sums its update reads (Sum declarations), and the @triton.jit function that returns their terms,
    # (param, grad, states, scalars, hyper, FLAGS) -> a tuple of fp32 blocks in the order of ``sums``, run by
    # one multi-tensor reduce launch before the update (kernels.multi_tensor). The update finds them after
    # its scalar states and constants: Tiger's NaN count and Σθ², SGDHD's ⟨g, g_prev⟩.
    sums: tuple = ()
    reduce: Optional[Callable] = None
    # @triton.jit predicates (scalars, hyper, FLAGS) -> bool: where False, that launch neither reads nor
    # writes θ (Tiger's micro-steps that do not move it). None: θ is always read.
    reduce_reads_param: Optional[Callable] = None
    update_reads_param: Optional[Callable] = None
    # Its param groups from a model, when its classes of tensors differ (Tiger's tiger_param_groups).
    param_groups: Optional[Callable] = None
    # Compile-time constants of the rule's kernel, besides its flag hyperparameters (AdamW's decoupled decay).
    flags: dict = field(default_factory=dict)
    # Group keys whose change rebuilds the launch plan, besides the compile-time flags and the states
    # (Tiger's param_kind: its classes of tensors are laid out in the plan).
    plan_keys: tuple = ()
    dtypes: tuple = DTYPES  # param dtypes the kernel supports
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))
    # Sign rules: where the momentum is within fp32 rounding of zero (about 1e-7 of its scale, so
    # about one element in 10^7 per step), a different fp32 operation order (GPU fused multiply-adds)
    # can take the opposite sign and move θ by 2·lr the other way. At most floor(fraction · numel)
    # elements of a tensor may differ: none in tensors under 10^4 elements, so that a lost element (a
    # tail the mask dropped) is never excused.
    sign_flip_fraction: float = 0.0
    torch_twin: Optional[type] = None  # the torch.optim class this rule must match
    # Complex params stepped as torch.optim steps them: param, gradient and states as torch.view_as_real,
    # element-wise on the real and imaginary parts (the states are kept complex, as torch keeps them).
    complex_params: bool = False
    # Sparse gradients (nn.Embedding(sparse=True)) served by the reference, densified, as torch's twin
    # serves them; the kernel reads dense gradients only. Weight decay is refused with them, as torch does.
    sparse_gradients: bool = False
    # Sparse gradients only, as torch's SparseAdam (OptimizerInfo.only_supports_sparse_grads): a dense
    # one is refused with torch's error type, and the reference receives them sparse, to update only
    # the entries they hold (densified, a held zero and an absent entry would look alike).
    only_sparse_gradients: bool = False
    nonnegative_params: bool = False  # the rule needs params >= 0 from the start (EG)
    learns_lr: bool = False  # the rule changes group["lr"] itself (SGDHD): a scheduler's lr is a start
    # Scalar states that count events (Tiger's NaN skips): optimizer.counter(name) sums them on the device.
    counters: tuple = ()
    # Each micro-batch's gradient can be folded into the state the moment autograd has it (Tiger's
    # built-in accumulation: the update reads only m and θ), so gradient release works under accumulation.
    folds_gradients: bool = False
    # Why gradient_release=True is refused, for a rule whose update needs more than its own param's
    # gradient (SGDHD's hypergradient: one dot product over every param's); "" where it is allowed.
    release_refused: str = ""
    # The "step" scalar state counts the optimizer's (micro-)steps, not each param's (Tiger: the
    # original's one `iterations`): every param's step is one counter per device, advanced once by
    # each step, also for params without a gradient (left untouched, they keep the optimizer's phase),
    # and under gradient_release once by each backward.
    step_per_optimizer: bool = False
    # A train/eval switch of the params (Modes); None for a rule whose params hold one point.
    modes: Optional[Modes] = None

    def __post_init__(self):
        if bool(self.sums) != (self.reduce is not None):
            raise ValueError(f"{self.name}: a rule with sums has a reduce that returns their terms, and only then")
        for spec in self.sums:
            if spec.over == "group" and spec.counts is not None:
                raise ValueError(f"{self.name}: sum {spec.name!r} over the group cannot count per-tensor events")
            if spec.mean and spec.over != "tensor":
                raise ValueError(f"{self.name}: sum {spec.name!r}: only a sum over a tensor can be a mean")
            if spec.into is not None and spec.over != "group":
                raise ValueError(f"{self.name}: sum {spec.name!r}: only a sum over the group goes into a group key")
        if any(spec.over != "tensor" and spec.over != "group" for spec in self.sums[:-1]):
            raise ValueError(f"{self.name}: only the last sum may be per row (the launcher's per-row scalar)")
        if self.modes is not None and self.modes.key not in [spec.name for spec in self.hyperparameters]:
            raise ValueError(f"{self.name}: its modes need the group key {self.modes.key!r} declared among its "
                             "hyperparameters (a recorded one, saved with the groups)")
        if self.has_kernel and self.update is None:
            raise ValueError(f"{self.name}: a rule with the 'triton' impl needs its update kernel: give update=..., "
                             "or impls=('reference',) for a rule its oracle alone serves")
        if not self.has_kernel and self.update is not None:
            raise ValueError(f"{self.name}: update= is given but impls={self.impls} has no 'triton' to run it; "
                             "add 'triton' to impls, or drop update")

    def sums_for(self, group) -> tuple:
        """The declared sums that exist for this group (``Sum.when``), in declared order."""
        return tuple(spec for spec in self.sums if spec.exists(group))

    @property
    def has_kernel(self) -> bool:
        """Whether the fused kernel can run the rule (impl="triton")."""
        return "triton" in self.impls

    @property
    def quantized_states(self) -> bool:
        """Whether state_dtype="int8" or "int4" can hold its states: not for a rule of sparse gradients
        only, as requantizing a whole block would move the entries of rows it must leave exactly alone."""
        return not self.only_sparse_gradients

    def kernel_arguments(self, group) -> tuple:
        """(hyper, FLAGS) for the kernels, two named tuples built from the declared hyperparameters:
        ``hyper.lr``, ``FLAGS.AMSGRAD``. FLAGS.FIRST_STEP (rules with a state made by the first step) is
        the launcher's to set per tensor. FLAGS.<STATE>_INDEX is where each declared state is in the
        kernel's ``states`` (-1 where the group keeps none): ``states[FLAGS.GRAD_AVG_INDEX]``."""
        return tuple(fields(**values) for fields, values in zip(self._kernel_types, self._kernel_fields(group)))

    def _kernel_fields(self, group) -> tuple:
        hyper, flags = {}, dict(self.flags)
        for spec in self.hyperparameters:
            value = group[spec.name] if spec.recorded is None else group.get(spec.name, spec.default)
            numbers, choices = spec.kernel_fields(value)
            hyper.update(numbers)
            flags.update(choices)
        names = self.state_names(group)
        flags.update({f"{spec.name.upper()}_INDEX": names.index(spec.name) if spec.name in names else -1
                      for spec in self.states})
        if self.has_first_step_states:
            flags["FIRST_STEP"] = False
        return hyper, flags

    @functools.cached_property
    def _kernel_types(self) -> tuple:
        """The rule's named tuple types, their fields those its defaults give (built once per rule)."""
        hyper, flags = self._kernel_fields({spec.name: spec.default for spec in self.hyperparameters})
        return (collections.namedtuple(f"{self.name}Hyperparameters", list(hyper)),
                collections.namedtuple(f"{self.name}Flags", list(flags)))

    @property
    def arguments(self) -> tuple:
        """The hyperparameters that are arguments of the class (all but the recorded ones), in order."""
        return tuple(spec for spec in self.hyperparameters if spec.recorded is None)

    @property
    def defaults(self) -> dict:
        """Each argument's default, in the order of the class signature (recorded hyperparameters are none)."""
        return {spec.name: spec.default for spec in self.arguments}

    def state_names(self, group) -> tuple:
        return tuple(s.name for s in self.states if s.exists(group))

    @property
    def has_first_step_states(self) -> bool:
        return any(s.initial == FIRST_STEP for s in self.states)

    def bytes_per_param(self, group, param_dtype=torch.float32, state_dtype=None, moves_param=True,
                        master_weight_bits=None) -> float:
        """Bytes one step moves per parameter: θ and g read, θ written, each state read and written (int8
        states: a code and its share of a 4-byte scale; a state the update only overwrites, written), and
        what the reduce launch reads for the declared sums (each tensor once).
        ``moves_param=False``: a micro-step that does not move θ (Tiger under accumulation), where θ is
        neither read nor written, by the update or the reduce. ``master_weight_bits``: θ's residual is
        read and written with θ."""
        element = _element_size(param_dtype)
        state_element = _state_element_size(state_dtype, param_dtype)
        names = self.state_names(group)
        states = sum(state_element * (1 + spec.update_reads) for spec in self.states if spec.name in names)
        reads = {name for spec in self.sums_for(group) for name in spec.reads if name in ("param", "grad", *names)}
        if not moves_param:
            reads.discard("param")
        reduce = sum(element if name in ("param", "grad") else state_element for name in reads)
        param = 2 * (element + _residual_size(master_weight_bits)) if moves_param else 0
        return param + element + states + reduce

    def state_bytes(self, group, numels, param_dtype=torch.float32, state_dtype=None, master_weight_bits=None) -> int:
        """Bytes of state kept for params of these sizes after a step: each element-wise state in
        ``state_dtype`` (default the param's dtype, as torch.optim), each scalar state one fp32 value;
        int8 states one byte of code per element, int4 one per started pair, and one fp32 scale per
        started quantization block; with ``master_weight_bits`` θ's residual (int16 for 32 bits, int8
        for 24)."""
        names = self.state_names(group)
        scalars = len(numels) * len(self.scalar_states) * SCALAR_STATE_BYTES
        residuals = sum(numels) * _residual_size(master_weight_bits)
        if not is_quantized(state_dtype):
            return sum(numels) * _element_size(state_dtype or param_dtype) * len(names) + scalars + residuals
        codes = sum(map(FORMATS[state_dtype].codes_numel, numels))
        scales = sum(scale_numel(n, state_dtype) for n in numels) * 4
        return (codes + scales) * len(names) + scalars + residuals


SCALAR_STATE_BYTES = 4  # scalar states are fp32 0-d tensors on the param's device


def _element_size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _residual_size(master_weight_bits) -> int:
    return 0 if master_weight_bits is None else _element_size(RESIDUAL_DTYPES[master_weight_bits])
def _state_element_size(state_dtype, param_dtype) -> float:
    """Bytes per element of one state: a quantized one's code and its share of a 4-byte scale."""
    if is_quantized(state_dtype):
        return FORMATS[state_dtype].bits / 8 + 4 / FORMATS[state_dtype].block
    return _element_size(state_dtype or param_dtype)


SHAPES = {
    "matrix": "its update sees a whole matrix (Muon: momentum, then Newton–Schulz on the matrix, then the apply)",
    "factored": "a state declared as row and column statistics of a matrix, O(n + m) (Adafactor)",
    "history": "its update sees past steps and re-evaluates a closure (L-BFGS's two-loop recursion)",
}


@dataclass(frozen=True)
class ShapedRule:
    """A rule whose update is not element-wise (``SHAPES``): declared in the registry beside the
    element-wise rows, so that the rule sheet, the README's list, the memory model and the tests iterate
    every rule; its class is made from its declaration (matrix: ``optim.matrix_rule``; history:
    ``optim.history_rule``) or its own
    (``optim.unregistered``), its oracle in ``optim.reference`` as for every rule."""

    name: str  # the class's name
    shape: str  # one of SHAPES
    summary: str
    optimizer: type
    reference: Callable  # the oracle
    torch_twin: Optional[type]
    # Bytes of state kept after a step, (group, param shapes, param dtype) -> int: the memory model.
    state_bytes: Callable
    # Which params it steps: Muon takes matrices only (a second optimizer takes the rest).
    takes: Callable = lambda param: True

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"{self.name}: shape={self.shape!r} is not one of {list(SHAPES)}")

    @property
    def defaults(self) -> dict:
        return dict(self.optimizer.DEFAULTS)
