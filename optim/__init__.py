"""Optimizers whose update is one fused Triton kernel, each checked against a pure-PyTorch oracle.

Every class is a torch.optim.Optimizer made from one row of ``optim.registry.RULES``.
"""
from optim.base import FusedOptimizer, optimizer_class
from optim.param_groups import tiger_param_groups
from optim.registry import RULES
from optim.regularization import with_gradient_penalty
from optim.schedule import PiecewiseLinearLR, piecewise_linear

SGD = optimizer_class(RULES["SGD"])
Adagrad = optimizer_class(RULES["Adagrad"])
RMSprop = optimizer_class(RULES["RMSprop"])
Adadelta = optimizer_class(RULES["Adadelta"])
Adam = optimizer_class(RULES["Adam"])
AdamW = optimizer_class(RULES["AdamW"])
Lion = optimizer_class(RULES["Lion"])
SignSGD = optimizer_class(RULES["SignSGD"])
Signum = optimizer_class(RULES["Signum"])
EG = optimizer_class(RULES["EG"])
EGStepSize = optimizer_class(RULES["EGStepSize"])
SGDHD = optimizer_class(RULES["SGDHD"])
Tiger = optimizer_class(RULES["Tiger"])

__all__ = ["RULES", "FusedOptimizer", "PiecewiseLinearLR", "optimizer_class", "piecewise_linear",
           "tiger_param_groups", "with_gradient_penalty", *RULES]
