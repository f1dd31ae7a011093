"""fusedoptim: every optimizer update rule as one fused Triton kernel, checked against a PyTorch oracle.

    import fusedoptim as fo
    optimizer = fo.AdamW(model.parameters(), lr=1e-3)

The three layers are subpackages: ``fusedoptim.optim`` (the torch.optim.Optimizer classes, one per row of
the registry, and their oracles), ``fusedoptim.kernels`` (the Triton math and the multi-tensor launcher) and
``fusedoptim.autotune`` (the per-GPU launch configurations); ``python -m fusedoptim.tuner`` tunes this GPU.
Every name ``fusedoptim.optim`` exports (each rule's class among them) is re-exported here.
"""
from fusedoptim import optim
from fusedoptim.optim import *  # noqa: F401,F403  (every rule's class, whatever the registry holds)

__all__ = list(optim.__all__)
__version__ = "0.2.0"
