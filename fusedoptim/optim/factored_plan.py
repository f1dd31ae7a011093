"""The fused step (``impl="triton"``) of a rule of the factored shape (``optim.factored_rule``) as a plan: what does not change between steps built once
(the launches, their pointer tables and program maps, the buffers their scalars and factors point
at, the index maps of the statistics), then reused step after step, as the element-wise classes'
plan (``optim.plan``) is.

A plan belongs to one param group and the params of it that have a gradient; ``fits`` says whether
a step may reuse it: the same group dict, the same params at the same addresses, the same state
tensors (a load_state_dict, or a state dropped, replaces them), the same ``state_dtype``, and
gradients laid out as before. Anything else builds a new plan, with every check of the launcher.
A step's new gradients (after ``zero_grad(set_to_none=True)`` each is a new tensor) are only
written into the tables (``Launch.set_grads``).

The four phases: ``optim.factored``'s docstring; the rule's math (``FactoredRule.math``) runs in them, and its
scalars (``FactoredRule.hyper``, ``weight``, ``floor``, ``step_size``) are read here each step.
"""
import weakref
from itertools import chain

import torch
import torch.distributed as dist

from fusedoptim.kernels.launcher import prepare_launches
from fusedoptim.kernels.slots import QuantizedStates, TensorSlots
from fusedoptim.optim.plan import same_objects
from fusedoptim.optim.quantization import FORMATS, STOCHASTIC, UNSIGNED, scale_name
from fusedoptim.optim.reference.adafactor import scalar_lr
from fusedoptim.optim.shards import Shards, local
from fusedoptim.optim.whole import WholeParams

def _state_tensors(states) -> list:
    return list(chain.from_iterable(state.values() for state in states))


def _layout(tensor) -> tuple:
    return tensor.shape, tensor.stride(), tensor.dtype, tensor.device


def _sum_over_shards(tensors: list, group) -> None:
    """In place, each tensor (this rank's partial sums) becomes its sum over the ranks of ``group``:
    one all-reduce of them all."""
    if not tensors:
        return
    total = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(total, group=group)
    torch._foreach_copy_(tensors, [part.view_as(t) for part, t in zip(total.split([t.numel() for t in tensors]),
                                                                      tensors)])


def _views(flat, shapes) -> list:
    """Consecutive parts of ``flat``, shaped as ``shapes``."""
    sizes = [torch.Size(shape).numel() for shape in shapes]
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes)]


class FactoredPlan:
    """One group's fused step, prepared (the module's docstring). FSDP2 params (DTensors split along
    dim 0) step their local shards: the row sums of a matrix lie whole in a shard, and a stack's
    matrices too; Σθ², Σu², a matrix's column sums and its Σ R_i are partial sums, summed over the
    shards (one all-reduce after the row statistics, one after the second reduce), so that every rank
    computes what one process would. ``state_dtype`` "int8"/"int4": the vectors' variance are codes and
    scales, read and written through the launcher's quantized path; an FSDP2 vector's are whole plain
    tensors, the vector stepped whole on every rank (gathered before, its shard written back after)."""

    def __init__(self, rule, group, params, states, state_dtype):
        self.rule = rule  # the declaration (optim.factored_rule.FactoredRule): its math, scalars and state names
        row_state, column_state, vector_state = rule.row_state, rule.column_state, rule.vector_state
        self.group, self.params, self.state_dicts, self.state_dtype = group, list(params), list(states), state_dtype
        self.state_tensors = _state_tensors(states)
        shards = Shards.of(params, f"{rule.name}'s param group")
        # FSDP2 vectors with a quantized variance are stepped whole on every rank (``optim.whole``): a
        # quantization block would straddle the shards (each row of a vector is one element).
        self.wholes = WholeParams([p if p.dim() <= 1 else local(p) for p in params], state_dtype)
        whole = set(self.wholes.indices)
        self.sharded = [shards is not None and shards.groups[i] is not None and i not in whole
                        for i in range(len(params))]
        self.shard_group = next((g for g in shards.groups if g is not None), None) if shards else None
        self.shapes = [p.shape for p in params]  # global shapes: a DTensor's
        self.numels = [p.numel() for p in params]
        self.states = [{name: local(value) for name, value in state.items()} for state in states]
        self.pointers = [local(p).data_ptr() for p in params]
        self.locals = self.wholes.stepped([local(p) for p in params])
        grads = self.wholes.substitute([local(p.grad) for p in params], self.wholes.grads)
        device = self.device = self.locals[0].device
        count = len(params)
        factored = self.factored = [i for i, p in enumerate(self.locals) if p.dim() > 1]
        vectors = [i for i, p in enumerate(self.locals) if p.dim() <= 1]
        row_vars = self.row_vars = [self.states[i][row_state] for i in factored]
        col_vars = self.col_vars = [self.states[i][column_state] for i in factored]
        fp32 = dict(dtype=torch.float32, device=device)
        # Every sum a step accumulates, in one buffer zeroed once a step: Σθ² and Σu² per param, then
        # each factored param's Σg² per row and per column.
        row_shapes, column_shapes = [r.shape for r in row_vars], [c.shape for c in col_vars]
        sizes = [count, count, sum(r.numel() for r in row_vars), sum(c.numel() for c in col_vars)]
        self.sums = torch.zeros(sum(sizes), **fp32)
        theta_squares, update_squares, row_sums, column_sums = self.sums.split(sizes)
        self.squares = self.sums[:2 * count]  # read on the host once a step
        self.theta_squares, self.update_squares = theta_squares, update_squares
        self.row_sums, self.column_sums = row_sums, column_sums
        self.row_sum_views, self.column_sum_views = _views(row_sums, row_shapes), _views(column_sums, column_shapes)
        # The divisors of the means: m for each row sum, n for each column sum and each matrix's Σ R_i.
        self.row_divisors = torch.cat([torch.full((r.numel(),), float(self.shapes[i][-1]), **fp32)
                                       for i, r in zip(factored, row_vars)]) if factored else None
        self.column_divisors = torch.cat([torch.full((c.numel(),), float(self.shapes[i][-2]), **fp32)
                                          for i, c in zip(factored, col_vars)]) if factored else None
        total_shapes = [(*r.shape[:-2], 1, 1) for r in row_vars]
        total_sizes = [torch.Size(shape).numel() for shape in total_shapes]
        self.totals = torch.zeros(sum(total_sizes), **fp32)
        self.total_views = _views(self.totals, total_shapes)
        self.total_divisors = torch.cat([torch.full((size,), float(self.shapes[i][-2]), **fp32)
                                         for i, size in zip(factored, total_sizes)]) if factored else None
        # For each row statistic, the index of its matrix's Σ R_i: R_i / max(mean R, ε₁) in one division.
        # (A shard's own rows: its row statistics are split as the param.)
        rows = [r.shape[-2] for r, size in zip(row_vars, total_sizes) for _ in range(size)]
        self.total_index = torch.repeat_interleave(torch.arange(len(self.totals), device=device),
                                                   torch.tensor(rows, dtype=torch.int64, device=device))
        # Casts of the means to the statistics' dtype, where it is not fp32 (bf16, fp16 params).
        self.row_means, self.column_means = self.row_sum_views, self.column_sum_views
        if any(r.dtype != torch.float32 for r in row_vars):
            self.row_cast = torch.empty(len(row_sums), dtype=row_vars[0].dtype, device=device)
            self.row_means = _views(self.row_cast, row_shapes)
        if any(c.dtype != torch.float32 for c in col_vars):
            self.column_cast = torch.empty(len(column_sums), dtype=col_vars[0].dtype, device=device)
            self.column_means = _views(self.column_cast, column_shapes)
        # The factors the kernels gather: R_i / max(mean R, ε₁) and C_j in fp32 (an fp32 C is its state).
        self.row_factors = torch.empty(len(row_sums), **fp32)
        self.row_factor_views = _views(self.row_factors, row_shapes)
        self.column_factors = [c.reshape(-1) if c.dtype == torch.float32 else torch.empty(c.numel(), **fp32)
                               for c in col_vars]
        self.weights = torch.zeros(count, **fp32)  # 1 − β̂₂ₜ per param
        self.step_sizes = torch.zeros(count, **fp32)  # −α/denom per param
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # the codes' key: the scheme draws nothing

        quantization, variance_scales = None, {i: () for i in vectors}
        if state_dtype is not None:
            fmt = FORMATS[state_dtype]
            quantization = QuantizedStates(fmt.bits, fmt.block, (UNSIGNED[rule.vector_kind],),
                                           (STOCHASTIC[rule.vector_kind],))
            variance_scales = {i: (self.states[i][scale_name(vector_state)],) for i in vectors}
        self.quantization = quantization
        p, g, s = self.locals, grads, self.states
        factors = {i: (self.row_factor_views[k].reshape(-1), self.column_factors[k]) for k, i in enumerate(factored)}
        prepared = lambda slots, indices, quantized=None: [
            ([indices[j] for j in members], launch) for members, launch in prepare_launches(slots, rule.name.lower(), quantized)]
        self.row_launches = prepared(
            [TensorSlots(param=p[i], grad=g[i], scalars=(theta_squares[i], sums.reshape(-1)), row_length=p[i].shape[-1])
             for i, sums in zip(factored, self.row_sum_views)], factored)
        # The per-tensor sums of the update (Adafactor's Σu², for its clipping), if the rule declares them.
        sums_update = rule.math.vector_sums is not None
        self.vector_sum_launches = prepared(
            [TensorSlots(param=p[i], grad=g[i], states=(s[i][vector_state],), scales=variance_scales[i],
                         scalars=(self.weights[i], theta_squares[i], update_squares[i])) for i in vectors if sums_update],
            vectors, quantization)
        self.factored_sum_launches = prepared(
            [TensorSlots(param=p[i], grad=g[i], scalars=(update_squares[i],), row_length=p[i].shape[-1],
                         factors=factors[i]) for i in factored if rule.math.factored_sums is not None], factored)
        self.factored_update_launches = prepared(
            [TensorSlots(param=p[i], grad=g[i], scalars=(self.step_sizes[i],), row_length=p[i].shape[-1],
                         factors=factors[i]) for i in factored], factored)
        self.vector_update_launches = prepared(
            [TensorSlots(param=p[i], grad=g[i], states=(s[i][vector_state],), scales=variance_scales[i],
                         scalars=(self.weights[i], self.step_sizes[i])) for i in vectors], vectors, quantization)
        self.launches = (self.row_launches + self.vector_sum_launches + self.factored_sum_launches
                         + self.factored_update_launches + self.vector_update_launches)
        self.grad_pointers = [grad.data_ptr() for grad in grads]
        self.grad_layouts = list(map(_layout, grads))
        self.grad_refs = list(map(weakref.ref, grads))
        self.grads = grads

    def fits(self, group, params, states, state_dtype) -> bool:
        """Whether a step of ``params`` (``group``'s with a gradient) with these state dicts may reuse this
        plan; if so, their gradients are written into its tables."""
        if (group is not self.group or state_dtype != self.state_dtype or not same_objects(params, self.params)
                or not same_objects(states, self.state_dicts)
                or not same_objects(_state_tensors(states), self.state_tensors)):
            return False
        if [local(p).data_ptr() for p in params] != self.pointers:
            return False  # a param moved (p.data = ...)
        grads = [local(p.grad) for p in params]
        if self.wholes:  # each rank's part checked, then the whole buffer that run() gathers into
            if not self.wholes.grads_match(grads):
                return False
            grads = self.wholes.substitute(grads, self.wholes.grads)
        if not same_objects(grads, [ref() for ref in self.grad_refs]):
            if list(map(_layout, grads)) != self.grad_layouts:
                return False  # the new plan's launcher checks them, and names what is wrong
            self.grad_refs = list(map(weakref.ref, grads))
        pointers = [grad.data_ptr() for grad in grads]
        if pointers != self.grad_pointers:
            for members, launch in self.launches:
                launch.set_grads([grads[i] for i in members], [pointers[i] for i in members])
            self.grad_pointers = pointers
        self.grads = grads
        return True

    def run(self) -> None:
        """One step of the group (its hyperparameters read now: they may change between steps)."""
        group, states, factored = self.group, self.states, self.factored
        grads, self.grads = self.grads, None  # the plan holds no gradient between steps
        lr = scalar_lr(group["lr"])  # a tensor lr: read on the host below (a sync where it lives on a GPU)
        rule, kernels = self.rule, self.rule.math
        floor = rule.floor(group, self.locals)
        hyper, flags = rule.hyper(group, lr, floor)
        step_counters = [state["step"] for state in states]
        torch._foreach_add_(step_counters, 1.0)
        steps = [counter.item() for counter in step_counters]  # CPU tensors, as torch's: no device sync
        weights = [rule.weight(group, t) for t in steps]  # the statistics' lerp weight (Adafactor's 1 − β̂₂ₜ)
        self.weights.copy_(torch.tensor(weights, dtype=torch.float32))
        self.sums.zero_()
        if self.wholes:
            self.wholes.gather()

        # 1. reduce: Σθ², Σg² per row (factored), Σu² (vectors); the factored tensors' column sums.
        for _, launch in self.row_launches:
            launch.reduce(kernels.row_sums, None, 2, hyper, flags)
        for i, column_sums in zip(factored, self.column_sum_views):
            if self.locals[i].numel():
                kernels.column_sums(grads[i], column_sums)
        for _, launch in self.vector_sum_launches:
            launch.reduce(kernels.vector_sums, None, 2, hyper, flags)

        # 2. statistics, O(n + m) per tensor: R lerped toward the row means; the shards' partial sums
        # added up (a matrix's rows span the shards: its column sums and Σ R_i); C lerped toward the
        # column means, R / max(mean R, ε₁).
        if factored:
            factored_weights = [weights[i] for i in factored]
            self.row_sums.div_(self.row_divisors)
            if self.row_means is not self.row_sum_views:
                self.row_cast.copy_(self.row_sums)
            torch._foreach_lerp_(self.row_vars, self.row_means, factored_weights)
            for row_var, total in zip(self.row_vars, self.total_views):
                torch.sum(row_var, dim=-2, keepdim=True, dtype=torch.float32, out=total)
        split = [i for i in factored if self.sharded[i] and len(self.shapes[i]) == 2]
        if any(self.sharded):
            positions = {i: k for k, i in enumerate(factored)}
            _sum_over_shards([self.theta_squares[i] for i in range(len(self.params)) if self.sharded[i]]
                             + [self.update_squares[i] for i in range(len(self.params))
                                if self.sharded[i] and i not in positions]
                             + [self.column_sum_views[positions[i]] for i in split]
                             + [self.total_views[positions[i]] for i in split], self.shard_group)
        if factored:
            self.column_sums.div_(self.column_divisors)
            if self.column_means is not self.column_sum_views:
                self.column_cast.copy_(self.column_sums)
            torch._foreach_lerp_(self.col_vars, self.column_means, factored_weights)
            self.totals.div_(self.total_divisors).clamp_(min=floor)
            torch._foreach_copy_(self.row_factor_views, self.row_vars)
            self.row_factors.div_(self.totals[self.total_index])
            copied = [(factor, c) for factor, c in zip(self.column_factors, self.col_vars) if c.dtype != torch.float32]
            if copied:
                torch._foreach_copy_([factor for factor, _ in copied], [c.reshape(-1) for _, c in copied])

        # 3. second reduce: Σu² of the factored tensors, reading R_i/max(mean R, ε₁) and C_j per element.
        for _, launch in self.factored_sum_launches:
            launch.reduce(kernels.factored_sums, None, 1, hyper, flags)
        if any(self.sharded):
            _sum_over_shards([self.update_squares[i] for i in factored if self.sharded[i]], self.shard_group)

        # The rule's step sizes (Adafactor's −α/denom) from Σθ² and Σu²: the step's one host sync.
        squares = self.squares.tolist()
        count = len(self.params)
        step_sizes = [float(rule.step_size(group, lr, t, numel, theta_square, update_square))
                      for numel, t, theta_square, update_square in zip(self.numels, steps, squares[:count],
                                                                        squares[count:])]
        self.step_sizes.copy_(torch.tensor(step_sizes, dtype=torch.float32))

        # 4. update: θ and the vectors' variance.
        for _, launch in self.factored_update_launches:
            launch.update(kernels.factored_update, None, hyper, flags)
        count = None if self.quantization is None else self.count
        for _, launch in self.vector_update_launches:
            launch.update(kernels.vector_update, None, hyper, flags, quantization_count=count)
        if self.wholes:
            self.wholes.scatter()


__all__ = ["FactoredPlan"]
