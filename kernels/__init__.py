"""Triton kernels: one shared multi-tensor launcher and one math file per update rule."""
from kernels.launcher import TensorSlots, hyperparameter, multi_tensor_update, sign

__all__ = ["TensorSlots", "hyperparameter", "multi_tensor_update", "sign"]
