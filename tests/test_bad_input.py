"""Bad input gets an error that names the parameter, raised before any tensor is modified."""
import math
import re

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from tests.conftest import as_gradient, impls_of, make_params, random_grads

RULE_NAMES = list(RULES)
# Every bad value each rule declares for each of its hyperparameters (optim.hyperparameters), with text
# its error must contain: a rule's new hyperparameter brings its own cases, no table here to extend.
CASES = [pytest.param(rule, spec.name, value, re.escape(text), id=f"{rule}-{spec.name}={value!r}"[:60])
         for rule in RULE_NAMES for spec in RULES[rule].hyperparameters for value, text in spec.bad]
IMPLS = ("triton", "reference", "auto")


def runs(rule: str, impl: str, state_dtype=None) -> bool:
    """Whether the rule can be built with impl and state_dtype (None, "int8" or "int4"): not impl="triton"
    without a kernel, nor quantized states where it refuses them (those refusals are tested in
    tests/test_torch_optim_db.py and tests/test_quantized_state.py)."""
    return impl in impls_of(RULES[rule], IMPLS) and (state_dtype is None or RULES[rule].quantized_states)


def with_options(cases, options):
    """Each case (led by its rule's name) with each tuple of ``options`` (impl, then state_dtype) it runs."""
    return [pytest.param(*case.values, *option, id="-".join(map(str, (case.id, *option))), marks=case.marks)
            for case in cases for option in options if runs(case.values[0], *option)]


def snapshot(optimizer, params):
    return [p.detach().clone() for p in params], {
        id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in params}


def assert_untouched(optimizer, params, before):
    saved_params, saved_state = before
    for param, saved in zip(params, saved_params):
        assert torch.equal(param, saved), "a param changed although the step raised"
        for name, value in optimizer.state[param].items():
            assert torch.equal(value, saved_state[id(param)][name]), f"state {name} changed although the step raised"


def stepped_optimizer(rule, impl="triton", state_dtype=None):
    """Two groups, one step taken so that state exists: a failing second step must leave it all alone."""
    params = make_params([(33,), (65,)], torch.float32, rule=RULES[rule])
    optimizer = getattr(optim, rule)([{"params": [params[0]]}, {"params": [params[1]]}], impl=impl,
                                     state_dtype=state_dtype)
    for param, grad in zip(params, random_grads(params, seed=0, rule=RULES[rule])):
        param.grad = grad
    optimizer.step()
    return optimizer, params


def test_every_hyperparameter_declares_a_bad_value():
    for rule in RULES.values():
        for spec in rule.arguments:
            assert spec.bad, f"{rule.name}.{spec.name} declares no bad value: the bad-input tests would skip it"


@pytest.mark.parametrize("rule, name, value, text", CASES)
def test_bad_hyperparameter_at_construction(rule, name, value, text):
    with pytest.raises(ValueError, match=f"invalid {name}=.*: {name} .*{text}"):
        getattr(optim, rule)([torch.zeros(3)], **{name: value})


@pytest.mark.parametrize("rule, name, value, text", CASES)
def test_bad_hyperparameter_in_added_group(rule, name, value, text):
    optimizer = getattr(optim, rule)([torch.zeros(3)])
    with pytest.raises(ValueError, match=text):
        optimizer.add_param_group({"params": [torch.zeros(2)], name: value})
    assert len(optimizer.param_groups) == 1, "the bad group was kept"


@pytest.mark.parametrize("rule, name, value, text, impl", with_options(CASES, [(impl,) for impl in IMPLS]))
def test_bad_hyperparameter_set_later_fails_the_step_before_any_update(rule, name, value, text, impl):
    """Also a tensor of two elements or on the meta device: its shape, dtype and device are checked at
    every step, its value never (that would be a host sync)."""
    optimizer, params = stepped_optimizer(rule, impl)
    optimizer.param_groups[1][name] = value  # as a careless scheduler could
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match=f"{text}.*param group 1|param group 1.*{text}"):
        optimizer.step()
    assert_untouched(optimizer, params, before)


@pytest.mark.parametrize("rule, dtype", [(rule, dtype) for rule in RULE_NAMES
                                         for dtype in (torch.complex64, torch.int64, torch.bool)
                                         if not (dtype.is_complex and RULES[rule].complex_params)])
def test_complex_or_integer_params_are_refused(rule, dtype):
    """Complex params only where the row says so (torch's twins step them through view_as_real)."""
    with pytest.raises(TypeError, match=f"param 1 of param group 0 has dtype {dtype}"):
        getattr(optim, rule)([torch.zeros(3), torch.zeros(3, dtype=dtype)])


# Each a function of the param and its rule: shape and dtype in the layout the rule takes; the layout
# it does not take (sparse where it takes dense gradients, dense where it takes sparse ones only).
BAD_GRADIENTS = {
    "shape": (lambda p, rule: as_gradient(rule, torch.zeros(p.numel() + 1)),
              "gradient of param 0 of param group 1 is torch.float32 \\(66,\\)"),
    "dtype": (lambda p, rule: as_gradient(rule, torch.zeros(p.shape, dtype=torch.float64)),
              "gradient of param 0 of param group 1 is torch.float64"),
    "layout": (lambda p, rule: torch.zeros(p.shape) if rule.only_sparse_gradients else torch.zeros(p.shape).to_sparse(),
               "param 0 of param group 1 has a (sparse|dense) gradient"),
}


@pytest.mark.parametrize("rule, bad_grad, text, impl, state_dtype", with_options([
    pytest.param(rule, *BAD_GRADIENTS[kind], id=f"{kind}-{rule}") for kind in BAD_GRADIENTS for rule in RULE_NAMES
    if not (kind == "layout" and RULES[rule].sparse_gradients)],  # both layouts: tests/test_torch_optim_db.py
    [("triton", None), ("reference", None), ("auto", None), ("triton", "int8"), ("reference", "int8"),
     ("triton", "int4")]))
def test_bad_gradient_fails_the_step_before_any_update(rule, impl, bad_grad, text, state_dtype):
    optimizer, params = stepped_optimizer(rule, impl, state_dtype)
    for param, grad in zip(params, random_grads(params, seed=1, rule=RULES[rule])):
        param.grad = grad
    grad = bad_grad(params[1], RULES[rule])
    if grad.layout != params[1].grad.layout:
        params[1].grad = grad
    else:
        params[1].grad.data = grad  # torch checks `p.grad = g`, but not this
    before = snapshot(optimizer, params)
    with pytest.raises((ValueError, RuntimeError), match=text):
        optimizer.step()
    assert_untouched(optimizer, params, before)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_unknown_impl_and_arguments(rule):
    with pytest.raises(ValueError, match="impl='cuda'"):
        getattr(optim, rule)([torch.zeros(3)], impl="cuda")
    with pytest.raises(TypeError, match="unexpected keyword argument 'momentun'"):
        getattr(optim, rule)([torch.zeros(3)], momentun=0.9)
    for state_dtype in (torch.int32, torch.float64, torch.int8, "int16"):  # float64 state would fail in the kernel
        with pytest.raises(ValueError, match=f"state_dtype={state_dtype!r} must be None .* one of .*'int8', 'int4'"):
            getattr(optim, rule)([torch.zeros(3)], state_dtype=state_dtype)


@pytest.mark.parametrize("master_weight_bits", [32, 24])
@pytest.mark.parametrize("rule, impl", with_options([pytest.param(rule, id=rule) for rule in RULE_NAMES],
                                                    [(impl,) for impl in IMPLS]))
def test_split_master_weights_refuse_what_they_cannot_complete_before_any_change(rule, impl, master_weight_bits):
    """An fp32 param (its own master), then a residual of the wrong shape or dtype: each named, untouched."""
    params = make_params([(33,), (65,)], torch.bfloat16, rule=RULES[rule])
    full = make_params([(5,)], torch.float32, rule=RULES[rule])
    optimizer = getattr(optim, rule)([{"params": params}, {"params": full}], impl=impl,
                                     master_weight_bits=master_weight_bits)
    for param, grad in zip([*params, *full], random_grads([*params, *full], seed=0, rule=RULES[rule])):
        param.grad = grad
    before = [p.clone() for p in params]
    with pytest.raises(TypeError, match="param 0 of param group 1 is torch.float32, and master_weight_bits="):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and not optimizer.state
    optimizer.param_groups.pop()
    optimizer.step()
    good = optimizer.state[params[1]]["master_residual"]
    other = torch.int8 if master_weight_bits == 32 else torch.int16
    for bad in (torch.zeros(64, dtype=good.dtype), torch.zeros_like(good, dtype=other)):
        optimizer.state[params[1]]["master_residual"] = bad
        before = snapshot(optimizer, params)
        with pytest.raises(ValueError, match="state 'master_residual' of param 1 of param group 0 is"):
            optimizer.step()
        assert_untouched(optimizer, params, before)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_bad_master_weight_bits_are_refused_at_construction(rule):
    for value in (16, True, "32"):
        with pytest.raises(ValueError, match=f"master_weight_bits={value!r} must be None"):
            getattr(optim, rule)([torch.zeros(3, dtype=torch.bfloat16)], master_weight_bits=value)
    with pytest.raises(ValueError, match="use one or the other"):
        getattr(optim, rule)([torch.zeros(3, dtype=torch.bfloat16)], master_weight_bits=32, stochastic_rounding=True)
# What may be wrong with a quantized state: (the entry, from its name; the bad value; the error's text).
BAD_QUANTIZED = {
    "short-scales": (lambda name: name + "_scale", lambda scales: scales[:-1].clone(),
                     "must be a contiguous float32 tensor of 1 elements"),
    "float16-scales": (lambda name: name + "_scale", lambda scales: scales.half(), "got torch.float16"),
    "missing-scales": (lambda name: name + "_scale", None, "got None"),
    "short-codes": (lambda name: name, lambda codes: codes[:-1].clone(), r"is torch\.u?int8 \((64|32),\)"),
}


@pytest.mark.parametrize("rule, state, entry, bad_value, text, impl, state_dtype", with_options([
    pytest.param(rule.name, spec.name, *BAD_QUANTIZED[kind], id=f"{kind}-{rule.name}-{spec.name}")
    for rule in RULES.values() for spec in rule.states[:1] for kind in BAD_QUANTIZED],
    [("triton", "int8"), ("reference", "int8"), ("triton", "int4"), ("reference", "int4")]))
def test_bad_quantized_states_fail_the_step_before_any_update(rule, state, entry, bad_value, text, impl, state_dtype):
    """A quantized state's codes one short, its scales one short, of another dtype, or gone: the step
    would read and write past their end (or dequantize with nothing), so it is refused, naming them,
    before any change."""
    hyper = {"momentum": 0.9} if RULES[rule].states[0].when == "momentum" else {}
    params = make_params([(33,), (65,)], torch.float32, rule=RULES[rule])
    optimizer = getattr(optim, rule)([{"params": [params[0]]}, {"params": [params[1]], **hyper}], impl=impl,
                                     state_dtype=state_dtype)
    for param, grad in zip(params, random_grads(params, seed=0, rule=RULES[rule])):
        param.grad = grad
    optimizer.step()
    name = entry(state)
    if bad_value is None:
        del optimizer.state[params[1]][name]
    else:
        optimizer.state[params[1]][name] = bad_value(optimizer.state[params[1]][name])
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match=f"state '{name}' of param 0 of param group 1 .*{text}"):
        optimizer.step()
    assert_untouched(optimizer, params, before)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_a_non_finite_tensor_lr_is_refused_where_its_value_can_be_read(rule, value):
    """A tensor's value is read at construction, in an added group and at a load (never at a step:
    a sync): inf or NaN there is refused, naming the group and the value; nothing is kept."""
    with pytest.raises(ValueError, match=r"invalid lr=tensor\((-?inf|nan)\) in the optimizer's arguments: lr must be finite"):
        getattr(optim, rule)([torch.zeros(3)], lr=torch.tensor(value))
    optimizer, params = stepped_optimizer(rule, "reference")
    with pytest.raises(ValueError, match=r"invalid lr=tensor\((-?inf|nan)\) in param group 2: lr must be finite"):
        optimizer.add_param_group({"params": [torch.zeros(2)], "lr": torch.tensor(value)})
    assert len(optimizer.param_groups) == 2, "the bad group was kept"
    saved = optimizer.state_dict()
    saved["param_groups"][1]["lr"] = torch.tensor(value)  # as a checkpoint of a diverged schedule holds it
    lrs, before = [group["lr"] for group in optimizer.param_groups], snapshot(optimizer, params)
    with pytest.raises(ValueError, match=r"invalid lr=tensor\((-?inf|nan)\) in param group 1 of the checkpoint: "
                                         "lr must be finite"):
        optimizer.load_state_dict(saved)
    assert [group["lr"] for group in optimizer.param_groups] == lrs, "a group took the checkpoint's lr"
    assert_untouched(optimizer, params, before)


def test_a_learned_lr_below_zero_loads_from_the_optimizers_own_checkpoint():
    """SGDHD's α follows its hypergradient, below 0 too (a constructor still refuses a negative lr):
    its own checkpoint loads, with the value it holds; a non-finite one is still refused."""
    optimizer, params = stepped_optimizer("SGDHD", "reference")
    saved = optimizer.state_dict()
    saved["param_groups"][1]["lr"] = torch.tensor(-2.5e-3)  # where a run's α went (seen in a DCP test)
    fresh, _ = stepped_optimizer("SGDHD", "reference")
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.param_groups[1]["lr"], torch.tensor(-2.5e-3))
    saved["param_groups"][1]["lr"] = torch.tensor(-math.inf)
    with pytest.raises(ValueError, match=r"invalid lr=tensor\(inf\) in param group 1 of the checkpoint"):
        fresh.load_state_dict(saved)


@pytest.mark.parametrize("rule, impl", with_options([pytest.param(rule, id=rule) for rule in RULE_NAMES],
                                                    [(impl,) for impl in IMPLS]))
def test_meta_params_are_refused_before_any_state_is_made(rule, impl):
    """torch.optim steps meta params (states on meta, no values); here the step is refused, naming the
    param, before any param of any group changes or any state is made: the reference made the states,
    then failed reading a meta value."""
    params = make_params([(33,)], torch.float32, rule=RULES[rule])
    meta = torch.zeros(5, device="meta")
    optimizer = getattr(optim, rule)([{"params": params}, {"params": [meta]}], impl=impl)
    params[0].grad, meta.grad = random_grads(params, seed=0, rule=RULES[rule])[0], torch.zeros(5, device="meta")
    before = params[0].clone()
    with pytest.raises(RuntimeError, match="param 0 of param group 1 is on the meta device"):
        optimizer.step()
    assert torch.equal(params[0], before) and not optimizer.state, "the refused step changed something"
