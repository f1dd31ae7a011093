"""The engine of the history shape (``optim.history_rule.HistoryRule``): the class of each history rule,
made from its declaration (``history_optimizer``). Its step is the shape's, written once over vector
operations (``optim.reference.history.history_step``) with the rule's math; ``impl`` chooses who does
the vector operations: the oracle (the rule's ``reference``, on ``FlatVectors``: torch's ops on flat
vectors), or ``FusedVectors``, one multi-tensor launch per operation over every param
(``kernels.lbfgs``; docs/lbfgs.md).

The rule declares its arguments after the shape's, their checks, its history, direction and step length
and its oracle; the engine does the rest for every history rule: the closure, the impl, one param group
on one device, torch's checks and state layout (all in the first param's state, as torch.optim.LBFGS
keeps it), and the launches kept across steps.
"""
import numbers
import weakref

import numpy
import torch

from fusedoptim.kernels import lbfgs as kernels
from fusedoptim.kernels.launcher import Launch
from fusedoptim.kernels.multi_tensor import ALIGNMENT_BYTES, PARAM_COLUMN
from fusedoptim.kernels.slots import TensorSlots, check_slots
from fusedoptim.optim.plan import same_objects
from fusedoptim.optim.reference.history import FlatVectors, dense_gradient, history_step, real_view
from fusedoptim.optim.unregistered import UnregisteredOptimizer, shaped_class

OPTIONS = dict(impl="auto")  # the shape's keyword-only options, after the rule's arguments
# The state the shape's step keeps, around the rule's history (``HistoryRule.history``), in torch's order.
STATE_BEFORE, STATE_AFTER = ("func_evals", "n_iter", "d", "t"), ("prev_flat_grad", "prev_loss")


class FusedVectors(FlatVectors):
    """The history shape's vector operations as launches of the one multi-tensor launcher. Vectors are stored flat,
    as torch's state holds them; each operation runs over their per-param parts beside the params
    (and gradients), one launch for every param. The coefficients and the dot products are 0-d fp32
    tensors on the params' device. Copies, clones and ‖·‖_∞ (exact in any order) are torch's.

    Built once for a list of params and kept across steps (``HistoryOptimizer.step``, while ``fits`` them): its
    launches are built at their first operation, one per kind (with or without a state, 16-byte
    aligned or not), and each operation only rewrites their pointer columns with its vectors'
    addresses (a flat vector's parts are its address plus fixed offsets): no per-param view, table or
    program map is made again."""

    def __init__(self, params):
        super().__init__(params)
        self.device = self.params[0].device
        numels = [p.numel() for p in self.params]
        self.numel = sum(numels)
        self.key = self.key_of(params)
        # Empty params get no row (no launch reads them); each row's part of a flat vector, in bytes.
        self.members = [i for i, n in enumerate(numels) if n]
        self.offsets = 4 * (numpy.cumsum([0] + numels[:-1], dtype=numpy.int64)[self.members])
        self.param_pointers = numpy.array([self.params[i].data_ptr() for i in self.members], dtype=numpy.int64)
        self.launches = {}  # (states, aligned) -> Launch
        # The gradients last checked against their params (the same objects need no check), held weakly:
        # no gradient is kept alive between steps.
        self.checked_grads = []

    @staticmethod
    def key_of(params) -> list:
        """What the launches depend on: each param's shape, dtype, device and address (``p.data = ...`` moves it)."""
        return [(p.shape, p.dtype, p.device, p.data_ptr()) for p in params]

    def fits(self, params) -> bool:
        return len(params) == len(self.originals) and self.key_of(params) == self.key

    def at(self, vector):
        """The addresses of ``vector``'s per-param parts: a flat vector, or a list of tensors (params, gradients)."""
        if isinstance(vector, torch.Tensor):
            return vector.data_ptr() + self.offsets
        if vector is self.params:
            return self.param_pointers
        return numpy.array([vector[i].data_ptr() for i in self.members], dtype=numpy.int64)

    def coefficient(self, value):
        """``value`` (a float, or a 0-d tensor) as the 0-d fp32 device tensor every tensor's scalar points at."""
        if isinstance(value, torch.Tensor):
            return value.to(device=self.device, dtype=torch.float32).reshape(())
        return torch.tensor(float(value), dtype=torch.float32, device=self.device)

    def launch(self, columns, scalar):
        """The launch for operands at ``columns`` (x, y and maybe a state, each an address per row) and the
        0-d ``scalar``, its pointer columns rewritten; None where every param is empty."""
        if not self.members:
            return None
        table = numpy.stack([*columns, numpy.full(len(self.members), scalar.data_ptr(), dtype=numpy.int64)], axis=1)
        aligned = not (table[:, :-1] % ALIGNMENT_BYTES).any()
        key = (len(columns) - 2, aligned)
        if key not in self.launches:
            real = [self.params[i] for i in self.members]  # the shapes and dtype its table is built for
            slots = [TensorSlots(param=p, grad=p, states=(p,) * key[0], scalars=(scalar,)) for p in real]
            check_slots(slots)
            self.launches[key] = Launch(slots, "lbfgs", aligned=aligned)
        launch = self.launches[key]
        launch.set_columns(PARAM_COLUMN.value, table)
        return launch

    # The launches run eagerly under torch.compile (a graph break each): a launch reads its tensors through
    # a table of data_ptr()s, which dynamo's fake tensors do not have (traced, they fail). A compiled
    # L-BFGS step is a chain of graphs anyway, broken by the closure's backward and the host's tolerance
    # checks, as torch's own (docs/lbfgs.md).
    @torch.compiler.disable
    def update(self, function, written, read, coefficient=None, state=None):
        """One launch of ``function`` over every param: x ← function(x, y, state) for each param's parts of
        ``written`` (x), ``read`` (y) and ``state`` (flat vectors, or lists of tensors)."""
        a = self.coefficient(1.0 if coefficient is None else coefficient)
        columns = (self.at(written), self.at(read)) + (() if state is None else (self.at(state),))
        launch = self.launch(columns, a)
        if launch is not None:
            launch.update(function, None, (), ())

    @torch.compiler.disable
    def reduce(self, function, first, second):
        """One launch: the sum over every param of ``function``'s terms, a 0-d fp32 device tensor."""
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        launch = self.launch((self.at(first), self.at(second)), total)
        if launch is not None:
            launch.reduce(function, None, 1, (), ())
        return total

    def new_vector(self):
        return torch.empty(self.numel, dtype=torch.float32, device=self.device)

    def gradient(self):
        vector = self.new_vector()
        grads = [real_view(dense_gradient(p).contiguous()) for p in self.originals]
        if not same_objects(grads, [ref() for ref in self.checked_grads]):
            # the launcher's checks (a gradient of another dtype, shape or device is refused) where a cheap
            # comparison finds a gradient unlike its param
            if any(g.dtype != p.dtype or g.shape != p.shape or g.device != p.device for g, p in zip(grads, self.params)):
                check_slots([TensorSlots(param=p, grad=g) for p, g in zip(self.params, grads)])
            self.checked_grads = [weakref.ref(g) for g in grads]
        self.update(kernels.scaled, vector, grads)  # a copy: 1·g is g, bit for bit
        return vector

    def add_to_params(self, t, d):
        self.update(kernels.add_scaled, self.params, d, t)

    def abs_sum(self, v):
        return self.reduce(kernels.abs_sum, v, v)

    def dot(self, a, b):
        return self.reduce(kernels.dot, a, b)

    def scaled(self, v, a):
        result = self.new_vector()
        self.update(kernels.scaled, result, v, a)
        return result

    def add_scaled_(self, x, a, y):
        self.update(kernels.add_scaled, x, y, a)

    def gradient_difference(self, g, g_prev):
        y = self.new_vector()
        self.update(kernels.gradient_difference, y, g, state=g_prev)
        return y



def history_optimizer(rule) -> type:
    """The class of one history rule: its signature (``params``, the rule's arguments, then ``OPTIONS``
    after a ``*``), its docstring, its checks at construction, on ``HistoryOptimizer``."""
    state = STATE_BEFORE + tuple(name for name in rule.history if name not in rule.scratch) + STATE_AFTER + rule.scratch
    return shaped_class(rule, HistoryOptimizer, OPTIONS, STATE=state)


def check_shape_arguments(name, arguments) -> dict:
    """The arguments every history rule has, checked as torch.optim.LBFGS checks lr (its words, first);
    max_eval=None made max_iter·5//4, as torch's."""
    lr = arguments["lr"]
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if arguments["max_eval"] is None:
        arguments = {**arguments, "max_eval": arguments["max_iter"] * 5 // 4}
    for key in ("max_iter", "max_eval"):
        value = arguments[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}: {key}={value!r} must be an integer ≥ 1")
    return arguments


def check_tolerances(name, arguments) -> None:
    for key in ("tolerance_grad", "tolerance_change"):
        value = arguments[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"{name}: {key}={value!r} must be a number ≥ 0")


class HistoryOptimizer(UnregisteredOptimizer):
    """The base of every history rule's class (``history_optimizer``): ``rule`` is its declaration.
    One param group only, every param on one device, as torch.optim.LBFGS."""

    rule = None
    FUSED_DTYPES = (torch.float32, torch.complex64)  # the kernels' vectors are fp32 (a complex param: 2 per element)
    WALKS_GRADIENTS = False  # FusedVectors.gradient copies each gradient, dense and contiguous, into a flat vector
    NEEDS_CLOSURE = True

    def __init__(self, params, arguments, impl="auto"):
        name = self.rule.name
        arguments = check_shape_arguments(name, arguments)
        arguments = self.rule.checked(arguments)  # the rule's own (L-BFGS's history_size among the shape's)
        check_tolerances(name, arguments)
        self.impl = impl
        super().__init__(params, arguments)
        if len(self.param_groups) != 1:
            raise ValueError(f"{name} doesn't support per-parameter options (parameter groups)")

    @torch.no_grad()
    def step(self, closure):
        """Up to max_iter iterations of the rule, evaluating ``closure`` as torch.optim.LBFGS does."""
        if not callable(closure):
            raise TypeError(f"{self.rule.name}.step needs a closure that recomputes the loss and the gradients and "
                            f"returns the loss (got {closure!r}): step(closure), as torch.optim.LBFGS")
        params = self.param_groups[0]["params"]
        impl = self.chosen_impl()  # refused before the state exists
        closure, state, group = torch.enable_grad()(closure), self.state[params[0]], self.param_groups[0]
        if impl != "triton":
            return self.rule.reference(closure, FlatVectors(params), state, group)
        # the launches of the last step's params, while they are the same tensors in the same places
        vectors = self.__dict__.get("fused_vectors")
        if vectors is None or not vectors.fits(params):
            vectors = self.fused_vectors = FusedVectors(params)
        return history_step(closure, vectors, state, group, self.rule.math)


__all__ = ["FusedVectors", "HistoryOptimizer", "history_optimizer"]
