"""torch's own optimizer test material, run against our twins: the drop-in claim checked by inputs
no one here wrote. ``torch.testing._internal.common_optimizers.optim_db`` ships in the torch wheel; for
every rule with a torch twin (its row's ``torch_twin``) the ``OptimizerInfo`` lists hyperparameter
combinations (``optim_inputs_func``, including those torch runs only on CUDA: tensor lr, tensor betas,
capturable) and bad inputs with the error type torch raises (``optim_error_inputs_func``).

Every input steps ours and torch's class (foreach=False, its for-loop: torch's reference) on the same
params and gradients for 7 steps — the count torch's own correctness tests use — comparing params and
every state after each step with torch's default fp32 tolerances, in both impls, with real and with
complex params (torch steps those through view_as_real). Every error input must raise (or warn) with
torch's type. The import needs the small ``expecttest`` package (the test extra installs it).
"""
import inspect

import pytest
import torch

from fusedoptim import optim
from fusedoptim.optim.registry import RULES
from fusedoptim.optim.torch_switches import SWITCHES
from tests.conftest import as_gradient, impls_of
from tests.optim_db import assert_raises_as_torch, error_id, error_inputs, moved, optim_db, optim_inputs

TWINS = {rule.torch_twin: rule for rule in RULES.values() if rule.torch_twin is not None}
INFOS = [info for info in optim_db if info.optim_cls in TWINS]
STEPS = 7
SHAPES = [(7,), (3, 5), (1,)]  # odd sizes, one element


def name(info):
    return info.optim_cls.__name__


def name_of(rule):
    return rule.name


def cases():
    for info in INFOS:
        for optim_input in optim_inputs(info):
            for dtype in (torch.float32, torch.complex64) if info.supports_complex else (torch.float32,):
                for impl in impls_of(TWINS[info.optim_cls], ("reference", "triton")):
                    yield pytest.param(info, optim_input.kwargs, dtype, impl,
                                       id=f"{name(info)}-{optim_input.desc}-{str(dtype)[6:]}-{impl}")


def torch_kwargs(info, kwargs):
    """torch's for-loop implementation (SparseAdam has only that, and no foreach argument): on the CPU
    capturable=True would refuse CPU params."""
    loop = {"foreach": False} if "foreach" in inspect.signature(info.optim_cls).parameters else {}
    return {**{k: v for k, v in kwargs.items() if k not in SWITCHES}, **loop}


def twins(dtype):
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(shape, dtype=dtype, generator=generator) for shape in SHAPES]
    return ([torch.nn.Parameter(v.clone()) for v in values], [torch.nn.Parameter(v.clone()) for v in values],
            generator)


def step_both(ours, theirs, ours_params, theirs_params, generator, steps):
    """Both step on the same gradients: sparse ones for a rule that takes only those (SparseAdam)."""
    for _ in range(steps):
        for p, q in zip(ours_params, theirs_params):
            grad = as_gradient(ours.rule, torch.randn(p.shape, dtype=p.dtype, generator=generator))
            p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        yield


def assert_same_state(ours, theirs, ours_params, theirs_params, what):
    for i, (p, q) in enumerate(zip(ours_params, theirs_params)):
        torch.testing.assert_close(p.detach(), q.detach(), msg=lambda m: f"{what}: param {i}: {m}")
        expected = {k: v for k, v in theirs.state[q].items() if v is not None}  # SGD keeps None without momentum
        assert set(ours.state[p]) == set(expected), f"{what}: param {i} states {set(ours.state[p])} != {set(expected)}"
        for key, value in expected.items():
            mine = ours.state[p][key]
            if key == "step":  # ours: a 0-d fp32 tensor; torch's is a 0-d fp32 tensor too (or a float, SparseAdam's int)
                mine, value = float(mine), float(value)
            torch.testing.assert_close(mine, value, msg=lambda m: f"{what}: param {i} state {key!r}: {m}")


@pytest.mark.parametrize("info, kwargs, dtype, impl", list(cases()))
def test_optim_input_steps_like_torch(info, kwargs, dtype, impl):
    ours_params, theirs_params, generator = twins(dtype)
    ours = getattr(optim, TWINS[info.optim_cls].name)(ours_params, impl=impl, **kwargs)
    theirs = info.optim_cls(theirs_params, **torch_kwargs(info, kwargs))
    assert not set(SWITCHES) & set(ours.param_groups[0]), "torch's switches are not stored in our groups"
    for step, _ in enumerate(step_both(ours, theirs, ours_params, theirs_params, generator, STEPS), 1):
        assert_same_state(ours, theirs, ours_params, theirs_params, f"step {step}")


def error_cases():
    for info in INFOS:
        for error_input in error_inputs(info):
            yield pytest.param(info, error_input, id=f"{name(info)}-{error_id(error_input)}")


@pytest.mark.parametrize("info, error_input", list(error_cases()))
def test_error_input_raises_torchs_error_type(info, error_input):
    assert_raises_as_torch(error_input, getattr(optim, name(info)), match=False)  # our words name our checks


@pytest.mark.parametrize("info", INFOS, ids=name)
def test_torch_checkpoint_leaves_no_switch_in_our_groups(info):
    """A torch checkpoint stores foreach, fused, capturable and differentiable in its groups: ours
    drops them at load and then steps as torch's optimizer does from the same checkpoint."""
    ours_params, theirs_params, generator = twins(torch.float32)
    switches = {switch: False for switch in SWITCHES if switch in inspect.signature(info.optim_cls).parameters}
    theirs = info.optim_cls(theirs_params, **switches)
    ours = getattr(optim, name(info))(ours_params, **switches)
    for _ in step_both(ours, theirs, ours_params, theirs_params, generator, 3):
        pass
    ours.load_state_dict(moved(theirs.state_dict()))
    assert not set(SWITCHES) & {*ours.param_groups[0], *ours.defaults}
    for step, _ in enumerate(step_both(ours, theirs, ours_params, theirs_params, generator, 3), 4):
        assert_same_state(ours, theirs, ours_params, theirs_params, f"step {step} after the load")


def test_switches_mean_what_the_docs_say():
    params = [torch.nn.Parameter(torch.randn(3))]
    assert optim.AdamW(params, fused=True).impl == "triton"  # fused=True asks for the fused kernel
    assert optim.AdamW(params, fused=False).impl == "auto"
    assert optim.AdamW(params, foreach=True, capturable=True).impl == "auto"
    with pytest.raises(ValueError, match="differentiable=True"):
        optim.AdamW(params, differentiable=True)
    with pytest.raises(ValueError, match="fused=True asks for the fused kernel"):
        optim.AdamW(params, fused=True, impl="reference")


@pytest.mark.parametrize("rule, switch", [(rule.name, switch) for rule in RULES.values() if rule.torch_twin
                                          for switch in SWITCHES
                                          if switch not in inspect.signature(rule.torch_twin).parameters])
@pytest.mark.parametrize("value", [True, False])
def test_a_switch_the_twin_does_not_take_is_refused_as_torch_refuses_it(rule, switch, value):
    """Code that passes SparseAdam(fused=True) fails on torch's class: it fails here alike (a TypeError),
    rather than with another error or none."""
    for cls in (getattr(torch.optim, rule), getattr(optim, rule)):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{switch}'"):
            cls([torch.nn.Parameter(torch.randn(3))], **{switch: value})


SPARSE_OPTIONS = {"SGD": [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "maximize": True}],
                  "Adagrad": [{}, {"lr_decay": 0.1, "initial_accumulator_value": 0.1, "maximize": True}],
                  "SparseAdam": [{}, {"betas": (0.8, 0.9), "eps": 1e-3, "maximize": True}]}
SPARSE_RULES = [rule for rule in RULES.values() if rule.sparse_gradients or rule.only_sparse_gradients]


def embeddings():
    torch.manual_seed(0)
    ours, theirs = nn_embedding(), nn_embedding()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def nn_embedding():
    return torch.nn.Embedding(9, 3, sparse=True)


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("rule, options", [(rule.name, options) for rule in SPARSE_RULES
                                           for options in SPARSE_OPTIONS[rule.name]])
def test_sparse_gradients_step_like_torch(rule, options, impl):
    """Sparse gradients (repeated indices included) served by the reference, as torch serves them; rows
    no index names keep their param and states (SparseAdam's: every state, each step)."""
    ours_module, theirs_module = embeddings()
    ours = getattr(optim, rule)(ours_module.parameters(), lr=0.1, impl=impl, **options)
    theirs = getattr(torch.optim, rule)(theirs_module.parameters(), lr=0.1, **options)
    for step in range(STEPS):
        indices = torch.tensor([step % 9, 4, 4, (3 * step) % 9])
        for module, optimizer in ((ours_module, ours), (theirs_module, theirs)):
            module(indices).pow(2).sum().backward()
            assert module.weight.grad.is_sparse
            optimizer.step()
            optimizer.zero_grad()
        torch.testing.assert_close(ours_module.weight, theirs_module.weight)
        for name, value in theirs.state[theirs_module.weight].items():
            if isinstance(value, torch.Tensor) and value.dim():  # torch's SGD keeps a sparse momentum buffer
                torch.testing.assert_close(ours.state[ours_module.weight][name], value.to_dense(),
                                           msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("rule", [rule for rule in RULES.values() if rule.only_sparse_gradients], ids=name_of)
@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_a_dense_gradient_is_refused_before_any_change(rule, impl):
    """A rule of sparse gradients only refuses a dense one with torch's error type (RuntimeError), and
    impl='triton' at construction: it has no kernel."""
    module, _ = embeddings()
    optimizer = getattr(optim, rule.name)(module.parameters(), impl=impl)
    module(torch.tensor([1, 2])).sum().backward()
    module.weight.grad = module.weight.grad.to_dense()
    before = module.weight.detach().clone()
    with pytest.raises(RuntimeError, match="has a dense gradient, and .* takes sparse gradients only"):
        optimizer.step()
    assert torch.equal(module.weight, before) and not optimizer.state
    with pytest.raises(ValueError, match="impl='triton' cannot run it: .* use impl='reference' or impl='auto'"):
        getattr(optim, rule.name)(module.parameters(), impl="triton")


@pytest.mark.parametrize("rule", [rule.name for rule in RULES.values() if rule.sparse_gradients])
@pytest.mark.parametrize("impl, options, text", [
    ("triton", {}, "sparse; the fused kernel reads dense gradients"),
    ("auto", {"weight_decay": 0.1}, "weight_decay=0.1 would make it dense"),
    ("reference", {"weight_decay": 0.1}, "weight_decay=0.1 would make it dense")])
def test_sparse_gradients_refused_before_any_change(rule, impl, options, text):
    module, _ = embeddings()
    optimizer = getattr(optim, rule)(module.parameters(), lr=0.1, impl=impl, **options)
    module(torch.tensor([1, 2])).sum().backward()
    before = module.weight.detach().clone()
    with pytest.raises(RuntimeError, match=text):
        optimizer.step()
    assert torch.equal(module.weight, before) and not optimizer.state
