"""Optimizers whose update is one fused Triton kernel, each checked against a pure-PyTorch oracle.

Every class is a torch.optim.Optimizer made from one row of ``optim.registry.RULES``.
"""
from optim.base import FusedOptimizer, optimizer_class
from optim.registry import RULES

Adam = optimizer_class(RULES["Adam"])
AdamW = optimizer_class(RULES["AdamW"])
Lion = optimizer_class(RULES["Lion"])
Tiger = optimizer_class(RULES["Tiger"])

__all__ = ["RULES", "FusedOptimizer", "optimizer_class", "Adam", "AdamW", "Lion", "Tiger"]
