"""torch's optim_db (``torch.testing._internal.common_optimizers``) as the tests here read it: an
optimizer's inputs (its CPU and CUDA lists merged), its error inputs run against one of our classes,
and a state_dict handed across between torch's class and ours through torch.save, as a checkpoint
travels. The import needs the small ``expecttest`` package (the test extra installs it): without it,
a test file that imports this module is skipped."""
import io
import warnings

import pytest
import torch

from fusedoptim.optim.torch_switches import SWITCHES

pytest.importorskip("expecttest", reason="torch's optim_db imports expecttest: pip install expecttest")
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db  # noqa: E402

DIRECTIONS = ("torch-to-ours", "ours-to-torch")


def info_of(optim_cls):
    """optim_db's OptimizerInfo of torch's ``optim_cls``."""
    return next(info for info in optim_db if info.optim_cls is optim_cls)


def optim_inputs(info) -> list:
    """The CPU and the CUDA lists, merged by description: the CUDA list adds inputs (tensor lr and betas)."""
    inputs = {}
    for device in ("cpu", "cuda"):
        for optim_input in info.optim_inputs_func(device=device, dtype=torch.float32):
            inputs.setdefault(optim_input.desc, optim_input)
    return list(inputs.values())


def error_inputs(info) -> list:
    """torch's bad inputs for ``info``'s class, each with the error (or warning) type torch gives."""
    return list(info.optim_error_inputs_func(device="cpu", dtype=torch.float32))


def error_id(error_input) -> str:
    return error_input.optimizer_error_input.desc


def assert_raises_as_torch(error_input, optimizer_class, step=lambda optimizer: optimizer.step(), match=True):
    """``optimizer_class`` given ``error_input`` warns or raises as torch's class does, with its type,
    at construction or at ``step(optimizer)``; where ``match``, in words that match torch's regex too."""
    optimizer_input = error_input.optimizer_error_input
    params, kwargs = optimizer_input.params, optimizer_input.kwargs
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        def act():
            optimizer_class(params, **kwargs)
    else:
        optimizer = optimizer_class(params, **kwargs)

        def act():
            step(optimizer)
    if issubclass(error_input.error_type, Warning):
        with pytest.warns(error_input.error_type):
            act()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(error_input.error_type, match=error_input.error_regex if match else None):
                act()


def moved(state_dict):
    """``state_dict`` through torch.save and torch.load, as a checkpoint file moves it."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def handed_across(direction, ours, theirs, fresh_ours, fresh_theirs):
    """(ours, theirs) once the sender's state_dict (``direction``: one of DIRECTIONS) is loaded, moved,
    into a fresh optimizer of the other class (``fresh_ours()`` or ``fresh_theirs()``): our groups then
    hold torch's keys, less torch's switches."""
    if direction == "torch-to-ours":
        ours = fresh_ours()
        ours.load_state_dict(moved(theirs.state_dict()))
    else:
        theirs = fresh_theirs()
        theirs.load_state_dict(moved(ours.state_dict()))
    assert set(ours.param_groups[0]) == set(theirs.param_groups[0]) - set(SWITCHES)
    return ours, theirs
