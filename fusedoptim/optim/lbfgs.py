"""``LBFGS``: torch.optim.LBFGS's twin, with its arguments, its state (a state_dict loads both ways)
and its closure evaluations. Its equations and the step itself are the oracle's
(``optim.reference.lbfgs``); ``impl`` chooses who does the vector operations: the oracle's flat
vectors, or ``FusedVectors``, one multi-tensor launch per operation over every param
(``kernels.lbfgs``; docs/lbfgs.md).

L-BFGS is a rule of the history shape (its row: ``optim.registry.SHAPED_RULES``); its interface is the
class's arguments (``LBFGS.DEFAULTS``), its impls (``LBFGS.IMPLS``) and ``LBFGS.STATE``, the names of
its state, all in the first param's state, as torch keeps them.
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
from fusedoptim.optim.reference.lbfgs import FlatVectors, dense_gradient, lbfgs_step, real_view
from fusedoptim.optim.unregistered import UnregisteredOptimizer


class FusedVectors(FlatVectors):
    """L-BFGS's vector operations as launches of the one multi-tensor launcher. Vectors are stored flat,
    as torch's state holds them; each operation runs over their per-param parts beside the params
    (and gradients), one launch for every param. The coefficients and the dot products are 0-d fp32
    tensors on the params' device. Copies, clones and ‖·‖_∞ (exact in any order) are torch's.

    Built once for a list of params and kept across steps (``LBFGS.step``, while ``fits`` them): its
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


def lbfgs_state_bytes(group, shapes, param_dtype) -> int:
    """Bytes of state once the history is full, for params of these shapes (N elements in all, fp32, as
    the kernels keep them): the direction d and the previous gradient (2N), history_size pairs (s, y)
    (2·h·N), and 0-d tensors: H_diag, ρ and α of each pair."""
    numel, history = sum(torch.Size(shape).numel() for shape in shapes), group["history_size"]
    return 4 * ((2 + 2 * history) * numel + 1 + 2 * history)


class LBFGS(UnregisteredOptimizer):
    """L-BFGS (Liu & Nocedal 1989), torch.optim.LBFGS's twin: the same arguments, defaults, state and
    closure evaluations; its equations in ``fusedoptim.optim.reference.lbfgs``. One param group only,
    every param on one device, as torch's.

    lr=1: the step length (the first iteration's is min(1, 1/‖g‖₁)·lr); a float or a 1-element tensor.
    max_iter=20: iterations per ``step(closure)``.
    max_eval=None: evaluations of the closure per step; None is max_iter·5//4.
    tolerance_grad=1e-7: a step stops where ‖g‖_∞ ≤ tolerance_grad.
    tolerance_change=1e-9: ... or where ⟨g, d⟩, ‖t·d‖_∞ or the change of the loss fall below it.
    history_size=100: the (s, y) pairs kept.
    line_search_fn=None: None (the fixed step t) or "strong_wolfe".
    impl="auto" (keyword-only): "reference" runs the oracle on flat vectors, as torch; "triton" the
        vector operations as multi-tensor launches (fp32 or complex64 contiguous params on one CUDA
        device, or the CPU with TRITON_INTERPRET=1); "auto" the kernels where they run, the reference
        elsewhere. Settable on a built optimizer, checked.

    ``step(closure)`` needs ``closure``, which zeroes the gradients, recomputes the loss, calls
    backward and returns the loss; it returns the closure's first loss.
    """

    DEFAULTS = dict(lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9, history_size=100,
                    line_search_fn=None)
    FUSED_DTYPES = (torch.float32, torch.complex64)  # the kernels' vectors are fp32 (a complex param: 2 per element)
    WALKS_GRADIENTS = False  # FusedVectors.gradient copies each gradient, dense and contiguous, into a flat vector
    NEEDS_CLOSURE = True
    STATE = ("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss",
             "al")
    LINE_SEARCHES = (None, "strong_wolfe")

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None, *, impl="auto"):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:  # torch's two checks, first, with its words
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        for name, value in (("max_iter", max_iter), ("max_eval", max_eval), ("history_size", history_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"LBFGS: {name}={value!r} must be an integer ≥ 1")
        for name, value in (("tolerance_grad", tolerance_grad), ("tolerance_change", tolerance_change)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"LBFGS: {name}={value!r} must be a number ≥ 0")
        if line_search_fn not in self.LINE_SEARCHES:  # torch refuses it at the first step, after the closure
            raise ValueError(f"LBFGS: line_search_fn={line_search_fn!r} must be one of {self.LINE_SEARCHES}")
        self.impl = impl
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    @torch.no_grad()
    def step(self, closure):
        """Up to max_iter L-BFGS iterations, evaluating ``closure`` as torch.optim.LBFGS does."""
        if not callable(closure):
            raise TypeError(f"LBFGS.step needs a closure that recomputes the loss and the gradients and returns the "
                            f"loss (got {closure!r}): step(closure), as torch.optim.LBFGS")
        params = self.param_groups[0]["params"]
        if self.chosen_impl() == "triton":
            # the launches of the last step's params, while they are the same tensors in the same places
            vectors = self.__dict__.get("fused_vectors")
            if vectors is None or not vectors.fits(params):
                vectors = self.fused_vectors = FusedVectors(params)
        else:
            vectors = FlatVectors(params)
        return lbfgs_step(torch.enable_grad()(closure), vectors, self.state[params[0]], self.param_groups[0])
