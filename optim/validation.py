"""Checks of hyperparameters by name, shared by every rule: a rule that declares ``betas`` gets the
``betas`` check. Each error names the rule, the parameter, the group and what to do instead."""
import numbers

import torch
from torch.distributed.tensor import DTensor

from optim.param_groups import PARAM_KINDS
from optim.schedule import schedule_points


def _number(value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError("a tensor hyperparameter must be a one-element floating-point tensor")
        return value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"expected a real number, got {type(value).__name__}")
    return float(value)


def _at_least_zero(value, group):
    if not _number(value) >= 0.0:  # written so that NaN fails too
        return "must be >= 0"


def _fraction(value, group):
    if not 0.0 <= _number(value) < 1.0:
        return "must be in [0, 1)"


def _betas(value, group):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return "must be a pair (beta1, beta2)"
    for i, beta in enumerate(value):
        if not 0.0 <= _number(beta) < 1.0:
            return f"must have each beta in [0, 1); beta{i + 1}={beta}"


def _flag(value, group):
    if not isinstance(value, bool):
        return "must be True or False"


def _positive_integer(value, group):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        return "must be an integer >= 1"


def _shrink(value, group):
    if not 0.0 < _number(value) <= 1.0:
        return "must be in (0, 1]"


def _at_most_one(value, group):
    if not 0.0 <= _number(value) <= 1.0:
        return "must be in [0, 1]"


def _nesterov(value, group):
    if not isinstance(value, bool):
        return "must be True or False"
    if value and not (_number(group["momentum"]) > 0 and _number(group["dampening"]) == 0):
        return "needs momentum > 0 and dampening = 0 (as in torch.optim.SGD)"


def _bounds(value, group):
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return "must be None or a pair (low, high)"
    low, high = _number(value[0]), _number(value[1])
    if not 0.0 < low <= high:
        return f"must have 0 < low <= high; got low={low}, high={high}"


def _schedule(value, group):
    schedule_points(value)  # raises ValueError with what is wrong


def _param_kind(value, group):
    if value not in ("auto", *PARAM_KINDS):
        return f"must be one of {['auto', *PARAM_KINDS]} (optim.tiger_param_groups(model) sets it per module)"


CHECKS = {
    "lr": _at_least_zero,
    "eps": _at_least_zero,
    "weight_decay": _at_least_zero,
    "betas": _betas,
    "beta": _fraction,
    "amsgrad": _flag,
    "maximize": _flag,
    "grad_accum_steps": _positive_integer,
    "shrink_ratio": _shrink,
    "momentum": _at_least_zero,
    "dampening": _at_least_zero,
    "nesterov": _nesterov,
    "lr_decay": _at_least_zero,
    "initial_accumulator_value": _at_least_zero,
    "alpha": _at_least_zero,
    "centered": _flag,
    "rho": _at_most_one,
    "gamma": _at_least_zero,
    "step_size_bounds": _bounds,
    "hypergrad_lr": _at_least_zero,
    "lr_schedule": _schedule,
    "param_kind": _param_kind,
}


# Hyperparameters a tensor may hold: the kernels read them through a pointer (kernels.hyperparameter),
# so a tensor changed in place is read on the device at every step. Every other one is a Python
# value the kernel takes as a number or a compile-time flag; a tensor there would cost a host sync.
TENSOR_HYPERPARAMETERS = ("lr",)


def _tensor_problem(name, value) -> str:
    """What is wrong with ``value`` as a tensor hyperparameter, read without its value (no host sync)."""
    if name not in TENSOR_HYPERPARAMETERS:
        return (f"must be a Python number, not a tensor: only {', '.join(TENSOR_HYPERPARAMETERS)} may be a tensor "
                f"(use {name}=float(value))")
    if value.numel() != 1 or not value.is_floating_point() or value.is_complex():
        return f"must be a one-element floating-point tensor, got {value.dtype} of shape {tuple(value.shape)}"
    if value.device.type == "meta":
        return "is a tensor on the meta device, which holds no value; make it on the params' device"
    return ""


def check_hyperparameters(rule_name: str, group: dict, names, where: str, host_values_only=False):
    """Raise ValueError for the first invalid hyperparameter of ``group`` among ``names``.

    With ``host_values_only`` (the check run at every step) a tensor's shape, dtype and device are
    checked but not its value: reading a device tensor would cost a host sync on every step.
    """
    for name in names:
        value = group[name]
        problem = ""
        if isinstance(value, torch.Tensor):
            problem = _tensor_problem(name, value)
        if not problem and not (host_values_only and isinstance(value, torch.Tensor)):
            try:
                problem = CHECKS[name](value, group)
            except ValueError as error:
                problem = str(error)
        if problem:
            raise ValueError(f"{rule_name}: invalid {name}={value!r} in {where}: {name} {problem}")


def check_state(rule_name: str, name: str, value, param, dtype, where: str):
    """An element-wise state must be the param's twin: its shape, the state dtype, its device. A
    smaller one would be written past its end by the fused step, a larger one used in part."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{rule_name}: state {name!r} of {where} is a {type(value).__name__}, not a tensor")
    if value.shape != param.shape or value.dtype != dtype or value.device != param.device:
        raise ValueError(
            f"{rule_name}: state {name!r} of {where} is {value.dtype} {tuple(value.shape)} on {value.device}, but its "
            f"param needs {dtype} {tuple(param.shape)} on {param.device}. The state belongs to another tensor (a "
            "checkpoint of another model, or the param replaced after the state was made, e.g. p.data = ...): load "
            "a matching state_dict, or drop this param's state (del optimizer.state[p]) to start it afresh")


def check_scalar_state(rule_name: str, name: str, value, param, where: str):
    """A scalar state (the step counter) is a one-element fp32 tensor on the param's device, where the
    kernel reads it (load_state_dict converts Python numbers and other dtypes to that)."""
    if (not isinstance(value, torch.Tensor) or value.numel() != 1 or value.dtype != torch.float32
            or value.device != param.device):
        got = (f"{value.dtype} of shape {tuple(value.shape)} on {value.device}" if isinstance(value, torch.Tensor)
               else repr(value))
        raise ValueError(f"{rule_name}: state {name!r} of {where} must be a one-element float32 tensor on "
                         f"{param.device}, got {got}; set it with load_state_dict, which converts it")


def check_param(rule_name: str, param, where: str, nonnegative=False):
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{rule_name}: {where} is a {type(param).__name__}, not a tensor")
    if param.is_complex() or not param.is_floating_point():
        raise TypeError(f"{rule_name}: {where} has dtype {param.dtype}; only real floating-point params "
                        "can be optimized (for complex params, optimize torch.view_as_real(param))")
    if nonnegative and isinstance(param, DTensor):
        param = param.full_tensor()  # every rank checks the whole tensor, so all raise or none does
    if nonnegative and param.numel() and param.min() < 0:  # a host sync, at construction only
        raise ValueError(f"{rule_name}: {where} has negative entries (min {param.min().item():.4g}); "
                         f"{rule_name} multiplies params by positive factors and needs them >= 0 from the "
                         "start (e.g. initialise with .abs() or a positive distribution)")


def check_grad(rule_name: str, param, where: str):
    grad = param.grad
    if grad.is_sparse:
        raise RuntimeError(f"{rule_name}: {where} has a sparse gradient, which {rule_name} does not support; "
                           "use dense gradients (e.g. nn.Embedding(sparse=False))")
    if grad.shape != param.shape or grad.dtype != param.dtype or grad.device != param.device:
        raise ValueError(f"{rule_name}: the gradient of {where} is {grad.dtype} {tuple(grad.shape)} on {grad.device}, "
                         f"its param {param.dtype} {tuple(param.shape)} on {param.device}; they must match")


IMPLS = ("auto", "triton", "reference")


def check_options(rule, impl, state_dtype, stochastic_rounding, seed, gradient_release):
    """The keyword-only options every class shares (optim.base.OPTIONS)."""
    if impl not in IMPLS:
        raise ValueError(f"{rule.name}: impl={impl!r} is not one of {IMPLS}")
    if state_dtype is not None and state_dtype not in rule.dtypes:
        raise ValueError(f"{rule.name}: state_dtype={state_dtype!r} must be None (each param's own dtype) or one of "
                         f"{list(rule.dtypes)}; for float64 math give float64 params, which step in float64 "
                         "(impl='auto' takes the reference for them)")
    for name, value in (("stochastic_rounding", stochastic_rounding), ("gradient_release", gradient_release)):
        if not isinstance(value, bool):
            raise ValueError(f"{rule.name}: {name}={value!r} must be True or False")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**31:
        raise ValueError(f"{rule.name}: seed={seed!r} must be an integer in [0, 2**31)")
    if gradient_release and not rule.folds_gradients:
        raise ValueError(
            f"{rule.name}: gradient_release=True needs a rule whose update reads only its state and θ, so that "
            f"each micro-batch's gradient can be folded into the state and freed (Tiger). {rule.name}'s update "
            "reads the step's whole gradient besides its state, so under accumulation it must be kept in a "
            "buffer until the last micro-batch; use optim.Tiger, or gradient_release=False")
