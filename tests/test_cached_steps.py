"""What fo.Adafactor's and fo.LBFGS's fused steps keep between steps (Adafactor's plan per group,
``optim.adafactor_plan``; L-BFGS's launches, ``optim.lbfgs.FusedVectors``) is rebuilt or re-pointed
when something changes between steps: gradients replaced, written in place or set to None, a param
group added, a state_dict loaded, a state tensor replaced, a param moved (``p.data = ...``), the impl
switched. Each change is made to every optimizer, then impl="triton" steps as impl="reference" and as
torch's twin, step after step (the fused impl's tolerances: tests/test_adafactor.py, test_lbfgs.py).
"""
import copy

import pytest
import torch

import fusedoptim as fo
from tests import test_adafactor, test_lbfgs


def _new_grads(shapes, generator):
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _adafactor_changes(twin):
    """(what, change(optimizer, params, grads, role)): the change before each step; ``role`` names the
    optimizer ("triton", "reference", "torch"), ``twin`` is torch's, whose state a load copies."""
    kept = []
    def assign(optimizer, params, grads, role):
        for p, g in zip(params, grads):
            p.grad = g.clone()

    def in_place(optimizer, params, grads, role):
        for p, g in zip(params, grads):
            p.grad.copy_(g)  # the same gradient tensors: the tables already point at them

    def then(action):
        def change(optimizer, params, grads, role):
            assign(optimizer, params, grads, role)
            action(optimizer, params, role)
        return change

    def load(optimizer, params, role):
        if role != "torch":
            optimizer.load_state_dict(copy.deepcopy(twin.state_dict()))

    def moved(optimizer, params, role):
        for p in params:
            kept.append(p.data)  # the old storage stays alive: a stale table would update it quietly
            p.data = p.data.clone()

    def switch(impl):
        def action(optimizer, params, role):
            if role == "triton":
                optimizer.impl = impl
        return action

    return [("new gradient tensors", assign), ("gradients written in place", in_place),
            ("param 2 without a gradient", then(lambda o, ps, role: setattr(ps[2], "grad", None))),
            ("param 2's gradient back", assign),
            ("a param group added", then(lambda o, ps, role: o.add_param_group(dict(params=ps[5:], weight_decay=0.1)))),
            ("torch's state_dict loaded", then(load)),
            ("row_var tensors replaced", then(lambda o, ps, role: [o.state[p].update(row_var=o.state[p]["row_var"].clone())
                                                                  for p in ps[:2]])),
            ("params moved", then(moved)),
            ("one step with the reference", then(switch("reference"))), ("triton again", then(switch("triton")))]


def test_adafactor_plan_follows_changes_between_steps():
    """Ten steps, one change before each (``_adafactor_changes``); the fused impl against the
    reference and torch.optim.Adafactor after every step."""
    shapes = [*test_adafactor.SHAPES, (6, 4), (9,)]  # the last two join in a second group at step 5
    generator = torch.Generator().manual_seed(3)
    values = [torch.randn(shape, generator=generator) for shape in shapes]
    runs = {}
    for name, make in (("triton", lambda ps: fo.Adafactor(ps, impl="triton")),
                       ("reference", lambda ps: fo.Adafactor(ps, impl="reference")),
                       ("torch", lambda ps: torch.optim.Adafactor(ps, foreach=False))):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        runs[name] = (make(params[:5]), params)
    for step, (what, change) in enumerate(_adafactor_changes(runs["torch"][0]), 1):
        grads = _new_grads(shapes, generator)
        for role, (optimizer, params) in runs.items():
            change(optimizer, params, grads, role)
            optimizer.step()
        ours, params = runs["triton"]
        for name in ("reference", "torch"):
            other, other_params = runs[name]
            test_adafactor.assert_same(ours, other, params, other_params, f"step {step} ({what}) against {name}",
                                       test_adafactor.TOLERANCES["triton"])


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # torch's float(closure())
def test_lbfgs_launches_follow_changes_between_steps():
    """Five step(closure) calls on tests/test_lbfgs.py's regression (three params: 15, 3 and 1 elements,
    so that some parts of a flat vector are not 16-byte aligned), a change before each: the params
    moved, a gradient left None by the closure, torch's state_dict loaded. The fused impl against the
    reference and torch.optim.LBFGS after every step."""
    options = dict(max_iter=2, history_size=3)
    runs = {}
    for name, make in (("triton", lambda ps: fo.LBFGS(ps, impl="triton", **options)),
                       ("reference", lambda ps: fo.LBFGS(ps, impl="reference", **options)),
                       ("torch", lambda ps: torch.optim.LBFGS(ps, **options))):
        params, loss_of = test_lbfgs.regression()
        runs[name] = (make(params), params, loss_of)
    twin, kept = runs["torch"][0], []  # kept: the params' old storage, alive (a stale table updates it quietly)

    def closure_without(optimizer, params, loss_of, index):
        def closure():
            loss = test_lbfgs.closure_for(optimizer, params, loss_of)()
            params[index].grad = None  # torch's LBFGS moves it by 0, as ours
            return loss
        return closure

    changes = [("as before", lambda o, ps: None),
               ("params moved", lambda o, ps: [kept.append(p.data) or setattr(p, "data", p.data.clone()) for p in ps]),
               ("bias without a gradient", None),
               ("torch's state_dict loaded",
                lambda o, ps: o is not twin and o.load_state_dict(copy.deepcopy(twin.state_dict()))),
               ("as before", lambda o, ps: None)]
    for step, (what, change) in enumerate(changes, 1):
        for optimizer, params, loss_of in runs.values():
            if change is None:
                optimizer.step(closure_without(optimizer, params, loss_of, 1))
                continue
            change(optimizer, params)
            optimizer.step(test_lbfgs.closure_for(optimizer, params, loss_of))
        ours, params, _ = runs["triton"]
        for name in ("reference", "torch"):
            other, other_params, _ = runs[name]
            test_lbfgs.assert_same(ours, other, params, other_params, test_lbfgs.FUSED,
                                   f"step {step} ({what}) against {name}")
