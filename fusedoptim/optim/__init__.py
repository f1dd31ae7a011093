"""Optimizers whose update is one fused Triton kernel, each checked against a pure-PyTorch oracle.

Every class is a torch.optim.Optimizer made from one row of ``optim.registry.RULES``, exported here
under the rule's name (``optim.AdamW``, ``optim.Tiger``, ...): a new row is a new class, with nothing
to add to this file. ``LBFGS``, ``Muon`` and ``Adafactor`` are rows of ``optim.registry.SHAPED_RULES``: Muon's
class is made from its declaration (``optim.muon``, on ``optim.matrix``), LBFGS's too (``optim.lbfgs``, on
``optim.history``); Adafactor's is its own (``optim.adafactor``), on one base (``optim.unregistered``).
"""
from fusedoptim.optim.adafactor import Adafactor
from fusedoptim.optim.base import FusedOptimizer, optimizer_class
from fusedoptim.optim.lbfgs import LBFGS
from fusedoptim.optim.muon import Muon
from fusedoptim.optim.param_groups import tiger_param_groups
from fusedoptim.optim.registry import RULES
from fusedoptim.optim.regularization import with_gradient_penalty
from fusedoptim.optim.schedule import PiecewiseLinearLR, piecewise_linear

globals().update({name: optimizer_class(rule) for name, rule in RULES.items()})

__all__ = ["Adafactor", "LBFGS", "Muon", "RULES", "FusedOptimizer", "PiecewiseLinearLR", "optimizer_class",
           "piecewise_linear", "tiger_param_groups", "with_gradient_penalty", *RULES]
