"""Triton kernels: one shared multi-tensor launcher, shared math helpers, and one math file per rule."""
from kernels.elementwise import bias_correction, coupled_gradient, decoupled_decay, hyperparameter, sign
from kernels.launcher import TensorSlots, multi_tensor_reduce, multi_tensor_update

__all__ = ["TensorSlots", "bias_correction", "coupled_gradient", "decoupled_decay", "hyperparameter", "multi_tensor_reduce",
           "multi_tensor_update", "sign"]
