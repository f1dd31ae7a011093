"""The checks a step runs before it changes anything: hyperparameters (each rule declares its own
checks, optim.hyperparameters), params, gradients, states and the shared options. Each error names the
rule, the parameter, the group and what to do instead."""
import numbers

import torch
from torch.distributed.tensor import DTensor

from fusedoptim.kernels.master_weights import RESIDUAL_DTYPES
from fusedoptim.optim.master_weights import PARAM_DTYPES
from fusedoptim.optim.quantization import FORMATS, QUANTIZED_DTYPES, is_quantized, scale_name, scale_numel


def _tensor_problem(spec, value) -> str:
    """What is wrong with ``value`` as a tensor hyperparameter, read without its value (no host sync)."""
    if not spec.tensor:
        return f"must be a Python number, not a tensor: use {spec.name}=float(value)"
    if value.numel() != 1 or not value.is_floating_point() or value.is_complex():
        return f"must be a one-element floating-point tensor, got {value.dtype} of shape {tuple(value.shape)}"
    if value.device.type == "meta":
        return "is a tensor on the meta device, which holds no value; make it on the params' device"
    return ""


def check_hyperparameters(rule, group: dict, where: str, host_values_only=False):
    """Raise ValueError for the first invalid hyperparameter of ``group`` among the rule's declared ones.

    With ``host_values_only`` (the check run at every step) a tensor's shape, dtype and device are
    checked but not its value: reading a device tensor would cost a host sync on every step.
    """
    for spec in rule.hyperparameters:
        value = group[spec.name]
        tensors = [v for v in (value if isinstance(value, (tuple, list)) else (value,)) if isinstance(v, torch.Tensor)]
        problem = next(filter(None, (_tensor_problem(spec, tensor) for tensor in tensors)), "")
        if tensors and isinstance(value, (tuple, list)) and len(tensors) != len(value):
            problem = "must hold all numbers or all tensors (as torch.optim's betas: both floats or both Tensors)"
        if not problem and not (host_values_only and tensors):
            try:
                problem = spec.check(value, group)
            except ValueError as error:
                problem = str(error)
        if problem:
            raise ValueError(f"{rule.name}: invalid {spec.name}={value!r} in {where}: {spec.name} {problem}")


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


def check_quantized_state(rule_name: str, name: str, state: dict, param, state_dtype: str, where: str):
    """A quantized state is its codes (int8: the param's twin in int8; int4: two a byte, flat) and its
    fp32 scales, one per quantization block: fewer would be read and written past their end."""
    if FORMATS[state_dtype].bits == 8:
        check_state(rule_name, name, state[name], param, torch.int8, where)
    else:
        codes, packed = state[name], FORMATS[state_dtype].codes_numel(param.numel())
        if (not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.numel() != packed
                or codes.dim() != 1 or not codes.is_contiguous() or codes.device != param.device):
            got = (f"{codes.dtype} {tuple(codes.shape)} on {codes.device}" if isinstance(codes, torch.Tensor)
                   else repr(codes))
            raise ValueError(f"{rule_name}: state {name!r} of {where} is {got}, but int4 codes of its param are "
                             f"uint8 ({packed},) on {param.device}, two a byte: load a matching state_dict, or "
                             "drop this param's state (del optimizer.state[p]) to start it afresh")
    scales = state.get(scale_name(name))
    blocks = scale_numel(param.numel(), state_dtype)
    if (not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or scales.numel() != blocks
            or scales.device != param.device or not scales.is_contiguous()):
        got = (f"{scales.dtype} of {scales.numel()} elements on {scales.device}" if isinstance(scales, torch.Tensor)
               else repr(scales))
        raise ValueError(f"{rule_name}: state {scale_name(name)!r} of {where} must be a contiguous float32 tensor of "
                         f"{blocks} elements (one scale per block of codes of {name!r}) on {param.device}, got {got}; "
                         "load a matching state_dict, or drop this param's state (del optimizer.state[p]) to start "
                         "it afresh")


def check_scalar_state(rule_name: str, name: str, value, param, where: str):
    """A scalar state (the step counter) is a one-element fp32 tensor on the param's device, where the
    kernel reads it (load_state_dict converts Python numbers and other dtypes to that)."""
    if (not isinstance(value, torch.Tensor) or value.numel() != 1 or value.dtype != torch.float32
            or value.device != param.device):
        got = (f"{value.dtype} of shape {tuple(value.shape)} on {value.device}" if isinstance(value, torch.Tensor)
               else repr(value))
        raise ValueError(f"{rule_name}: state {name!r} of {where} must be a one-element float32 tensor on "
                         f"{param.device}, got {got}; set it with load_state_dict, which converts it")


class ParamDtypeError(TypeError, ValueError):
    """A param of a dtype the rule cannot step: a TypeError, as for any wrong dtype, and a ValueError,
    which torch.optim.SparseAdam raises for a complex param."""


def check_param(rule, param, where: str):
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{rule.name}: {where} is a {type(param).__name__}, not a tensor")
    if param.layout is not torch.strided:  # torch.optim's type (SparseAdam's check); no rule steps a sparse θ
        raise ValueError(f"{rule.name}: {where} is a {param.layout} tensor; {rule.name} requires dense parameter "
                         "tensors (sparse gradients of dense params are what nn.Embedding(sparse=True) makes)")
    if not (param.is_floating_point() or (param.is_complex() and rule.complex_params)):
        raise ParamDtypeError(f"{rule.name}: {where} has dtype {param.dtype}; only real floating-point params "
                        "can be optimized (for complex params, optimize torch.view_as_real(param))")
    if rule.nonnegative_params and isinstance(param, DTensor):
        param = param.full_tensor()  # every rank checks the whole tensor, so all raise or none does
    # a host sync, at construction only; a meta param holds no values (its step is refused: check_grad)
    if rule.nonnegative_params and param.numel() and param.device.type != "meta" and param.min() < 0:
        raise ValueError(f"{rule.name}: {where} has negative entries (min {param.min().item():.4g}); "
                         f"{rule.name} multiplies params by positive factors and needs them >= 0 from the "
                         "start (e.g. initialise with .abs() or a positive distribution)")


def check_master_param(rule, param, where: str, master_weight_bits: int):
    """Split master weights complete a bf16 or fp16 param; any other is its own master."""
    if param.dtype not in PARAM_DTYPES:
        raise TypeError(f"{rule.name}: {where} is {param.dtype}, and master_weight_bits={master_weight_bits} completes "
                        f"bf16 or fp16 params only (an fp32 param is its own master); give {where} another optimizer "
                        "without master_weight_bits, or make it bf16 or fp16")


def check_grad(rule, param, where: str, group: dict):
    if param.device.type == "meta":  # before any state is made: the reference would make them, then fail on .item()
        raise RuntimeError(f"{rule.name}: {where} is on the meta device, which holds no values to step; materialize "
                           "the model first (module.to_empty(device=...), then initialise it) and step it there")
    grad = param.grad
    if rule.only_sparse_gradients and not grad.is_sparse:  # torch's SparseAdam raises RuntimeError too
        raise RuntimeError(f"{rule.name}: {where} has a dense gradient, and {rule.name} takes sparse gradients only "
                           "(nn.Embedding(sparse=True)'s); use optim.Adam for dense gradients")
    if grad.is_sparse:
        if not (rule.sparse_gradients or rule.only_sparse_gradients):
            raise RuntimeError(f"{rule.name}: {where} has a sparse gradient, which {rule.name} does not support; "
                               "use dense gradients (e.g. nn.Embedding(sparse=False)), or optim.SGD, optim.Adagrad "
                               "or optim.SparseAdam")
        if group.get("weight_decay", 0) != 0:  # g + λθ is dense: torch refuses it too
            raise RuntimeError(f"{rule.name}: {where} has a sparse gradient, and weight_decay="
                               f"{group['weight_decay']} would make it dense (torch.optim refuses it too); use "
                               "weight_decay=0 for the groups of sparse params, or dense gradients")
    if grad.shape != param.shape or grad.dtype != param.dtype or grad.device != param.device:
        raise ValueError(f"{rule.name}: the gradient of {where} is {grad.dtype} {tuple(grad.shape)} on {grad.device}, "
                         f"its param {param.dtype} {tuple(param.shape)} on {param.device}; they must match")


IMPLS = ("auto", "triton", "reference")


def check_impl(name: str, impl) -> None:
    """The ``impl`` option of ``name``'s class: one of IMPLS."""
    if impl not in IMPLS:
        raise ValueError(f"{name}: impl={impl!r} is not one of {IMPLS}")


def check_master_weight_bits(name: str, master_weight_bits, stochastic_rounding: bool) -> None:
    """The ``master_weight_bits`` option of ``name``'s class (every class that steps θ element-wise has it)."""
    if master_weight_bits not in (None, 24, 32) or isinstance(master_weight_bits, bool):
        raise ValueError(f"{name}: master_weight_bits={master_weight_bits!r} must be None (the param is its own "
                         "master), 32 (bf16 or fp16 params plus a 16-bit residual: an exact fp32 master) or 24 (an "
                         "8-bit residual)")
    if master_weight_bits is not None and stochastic_rounding:
        raise ValueError(f"{name}: master_weight_bits={master_weight_bits} keeps in θ's residual the part of each "
                         "update that stochastic_rounding=True would keep on average only; use one or the other")


def check_saved_residual(name: str, where: str, residual, master_weight_bits) -> None:
    """A checkpoint's master residual (None: none saved) loads into an optimizer of the width it was saved
    with; one without masters drops it (θ, the 16-bit param, is then the master)."""
    if residual is None or master_weight_bits is None:
        return
    expected = RESIDUAL_DTYPES[master_weight_bits]
    if not isinstance(residual, torch.Tensor) or residual.dtype != expected:
        got = residual.dtype if isinstance(residual, torch.Tensor) else type(residual).__name__
        raise ValueError(f"{name}: {where} has a 'master_residual' of {got}, but master_weight_bits="
                         f"{master_weight_bits} keeps {expected}: load it into an optimizer of the master_weight_bits "
                         "it was saved with (int16: 32, int8: 24)")


def check_options(rule, impl, state_dtype, stochastic_rounding, seed, gradient_release, master_weight_bits):
    """The keyword-only options every class shares (optim.base.OPTIONS)."""
    check_impl(rule.name, impl)
    if impl not in ("auto", *rule.impls):
        raise ValueError(f"{rule.name}: impl={impl!r} cannot run it: {rule.name} has no fused kernel (its impls are "
                         f"{rule.impls}); use impl='reference' or impl='auto', which takes the reference")
    if is_quantized(state_dtype) and not rule.quantized_states:
        raise ValueError(f"{rule.name}: state_dtype={state_dtype!r} would requantize whole blocks of every state at "
                         f"each step, moving the entries of rows a sparse gradient does not hold, which {rule.name} "
                         "leaves exactly as they are; use state_dtype=None or a float dtype")
    if state_dtype is not None and not is_quantized(state_dtype) and state_dtype not in rule.dtypes:
        raise ValueError(f"{rule.name}: state_dtype={state_dtype!r} must be None (each param's own dtype) or one of "
                         f"{list(rule.dtypes) + list(QUANTIZED_DTYPES)}; for float64 math give float64 params, which "
                         "step in float64 (impl='auto' takes the reference for them)")
    for name, value in (("stochastic_rounding", stochastic_rounding), ("gradient_release", gradient_release)):
        if not isinstance(value, bool):
            raise ValueError(f"{rule.name}: {name}={value!r} must be True or False")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**31:
        raise ValueError(f"{rule.name}: seed={seed!r} must be an integer in [0, 2**31)")
    check_master_weight_bits(rule.name, master_weight_bits, stochastic_rounding)
    if gradient_release and rule.release_refused:
        raise ValueError(f"{rule.name}: gradient_release=True steps each param inside backward, the moment its own "
                         f"gradient is ready, and {rule.name} cannot: {rule.release_refused}; use gradient_release=False")
