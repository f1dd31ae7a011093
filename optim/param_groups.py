"""Tiger's param groups from a model, in one line: ``optim.Tiger(optim.tiger_param_groups(model), lr=1e-3)``."""
import torch
from torch import nn

# Modules whose weight is a normalization scale (gamma, initialised at 1); any module whose class name
# holds "Norm" (a custom RMSNorm) counts too.
NORMALIZATIONS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _kind(module: nn.Module, name: str) -> str:
    is_normalization = isinstance(module, NORMALIZATIONS) or "norm" in type(module).__name__.lower()
    if name == "bias" or (is_normalization and name != "weight"):
        return "bias"
    if is_normalization:
        return "normalization"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and name == "weight":
        return "embedding"
    return "matrix"


def tiger_param_groups(model: nn.Module, **options) -> list[dict]:
    """One group per kind of tensor (``kernels.tiger.PARAM_KINDS``), as Tiger's original classes them:
    biases (lr/2, no decay, NaN center 0), normalization weights (lr/2, no decay, center 1),
    nn.Embedding weights (lr × RMS of each row) and every other weight (lr × RMS of the whole tensor).

    ``options`` (lr, weight_decay, ...) go into every group. Params that do not require grad are left
    out; a param shared by two modules (tied embeddings) is classed by the first that holds it.
    """
    kinds: dict[str, list[torch.Tensor]] = {"bias": [], "normalization": [], "embedding": [], "matrix": []}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                kinds[_kind(module, name)].append(param)
    return [dict(params=params, param_kind=kind, **options) for kind, params in kinds.items() if params]
