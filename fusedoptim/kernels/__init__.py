"""Triton kernels: one shared multi-tensor launcher, shared math helpers, and one math file per rule."""
from fusedoptim.kernels.elementwise import bias_correction, coupled_gradient, decoupled_decay, hyperparameter, sign
from fusedoptim.kernels.launcher import Launch, prepare_launches
from fusedoptim.kernels.slots import TensorSlots

__all__ = ["Launch", "TensorSlots", "bias_correction", "coupled_gradient", "decoupled_decay", "hyperparameter",
           "prepare_launches", "sign"]
