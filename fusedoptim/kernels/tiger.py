"""Tiger (Su Jianlin 2023, bojone/tiger): the fused update, with all that the original has.

Equations in ``optim.reference.tiger``'s docstring; its classes of tensors are ``optim.param_groups``,
and its sums are declared on its row (laid out by ``optim.sums``). Per tensor the kernels receive, as scalars: the step counter (the
optimizer's micro-steps, one tensor for every param on a device), its lr constant (1/2 for biases and
normalization weights, else 0), 1/(elements per RMS) (0 for the kinds without RMS; a matrix's numel,
an embedding row's length), its weight-decay multiplier (0 or 1), its NaN-guard center (0 or 1), and
the two sums ``tiger_reduce`` adds up before the update: the NaN count of its gradient (the guard
needs a verdict on the whole tensor before any element moves) and Σθ² (one per row for an embedding
table: the launcher's per-row scalar). The piecewise-linear schedule is a compile-time table
evaluated from the step counter: the lr never syncs to the host and a new step never compiles. On
micro-steps that do not move θ (accumulation), θ is neither read nor written unless the NaN guard
shrinks it.
"""
import triton
import triton.language as tl

from fusedoptim.kernels.elementwise import agreement, cautious, hyperparameter, sign


@triton.jit
def piecewise_linear(step, FLAGS: tl.constexpr):
    """``optim.schedule.piecewise_linear`` on the device. FLAGS.SCHEDULE: its points flattened, (step0,
    multiplier0, step1, multiplier1, ...). Read here, from the FLAGS tuple itself: triton 3.6 cannot
    pass a tuple taken out of a constexpr on to another function."""
    SCHEDULE: tl.constexpr = FLAGS.SCHEDULE
    multiplier = SCHEDULE[len(SCHEDULE) - 1] + 0.0 * step  # constant after the last point
    for i in tl.static_range(0, len(SCHEDULE) - 2, 2):
        step_begin, begin, step_end, end = SCHEDULE[i], SCHEDULE[i + 1], SCHEDULE[i + 2], SCHEDULE[i + 3]
        between = (step >= step_begin) & (step < step_end)
        slope = (end - begin) / (step_end - step_begin)
        multiplier = tl.where(between, begin + slope * (step - step_begin), multiplier)
    return multiplier


@triton.jit
def _moves_theta(step, grad_accum_steps):
    """Whether this micro-step is the last of its accumulation cycle, the one that moves θ."""
    micro_step = step - 1.0  # t counts micro-steps from 0; the step counter already counts this one
    cycle_position = micro_step - grad_accum_steps * tl.floor(micro_step / grad_accum_steps)
    return cycle_position == grad_accum_steps - 1.0


@triton.jit
def _momentum(m, grad, step, beta, grad_accum_steps):
    """m's new value: the first micro-step of a cycle decays m, each adds its share (1 − β)/k of g."""
    micro_step = step - 1.0
    cycle_position = micro_step - grad_accum_steps * tl.floor(micro_step / grad_accum_steps)
    return tl.where(cycle_position == 0.0, beta, 1.0) * m + (1.0 - beta) / grad_accum_steps * grad


@triton.jit
def tiger_reduce(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    """The gradient's NaN count, with caution where sign(m) agrees with g, and Σθ² (zero where θ is
    not read)."""
    terms = (tl.where(grad != grad, 1.0, 0.0),)
    if FLAGS.CAUTIOUS:
        new_m = _momentum(states[FLAGS.M_INDEX], grad, scalars[0], hyper.beta, hyper.grad_accum_steps)
        terms = terms + (agreement(sign(new_m), grad),)
    return terms + (param * param,)


@triton.jit
def tiger_reduce_reads_param(scalars, hyper, FLAGS: tl.constexpr):
    """RMS(θ) is needed only by the kinds that scale by it, and only on a micro-step that moves θ."""
    return _moves_theta(scalars[0], hyper.grad_accum_steps) & (scalars[2] > 0.0)


@triton.jit
def tiger_update_reads_param(scalars, hyper, FLAGS: tl.constexpr):
    """θ moves on the last micro-step of a cycle, or toward its center when the gradient has a NaN."""
    return _moves_theta(scalars[0], hyper.grad_accum_steps) | (scalars[5] > 0.0)


@triton.jit
def tiger_update(param, grad, states, scalars, hyper, FLAGS: tl.constexpr):
    lr, beta, grad_accum_steps = hyperparameter(hyper.lr), hyper.beta, hyper.grad_accum_steps
    step, lr_constant, inverse_rms_length, decay_scale, center, nan_count = (scalars[0], scalars[1], scalars[2],
                                                                             scalars[3], scalars[4], scalars[5])
    if FLAGS.CAUTIOUS:  # the agreement (scalars[6]) comes before Σθ², the last: it may be per row
        sum_of_squares = scalars[7]
    else:
        sum_of_squares = scalars[6]
    m = states[FLAGS.M_INDEX]
    micro_step = step - 1.0
    # Accumulation gating: the first micro-step of a cycle decays m (_momentum), the last one moves θ.
    cycle_position = micro_step - grad_accum_steps * tl.floor(micro_step / grad_accum_steps)
    eta = tl.where(cycle_position == grad_accum_steps - 1.0, lr * piecewise_linear(micro_step, FLAGS), 0.0)
    lr_scale = lr_constant + tl.sqrt(sum_of_squares * inverse_rms_length)  # 1/2, RMS(θ), or RMS of the row
    new_m = _momentum(m, grad, step, beta, grad_accum_steps)
    direction = cautious(sign(new_m), grad, scalars, 6, FLAGS)  # masked where it disagrees with g, with caution
    new_param = param - eta * lr_scale * (direction + decay_scale * hyper.weight_decay * param)
    grad_has_nan = nan_count > 0.0
    shrunk = (param - center) * hyper.shrink_ratio + center  # NaN guard: toward the initialisation center
    return tl.where(grad_has_nan, shrunk, new_param), (tl.where(grad_has_nan, m, new_m),)
