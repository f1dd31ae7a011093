"""Tiger's classes of tensors: what each class takes (its row's ``tensor_constants``, and whether its
Σθ² is declared over the tensor or each row), and its param groups from a model in one line:
``optim.Tiger(optim.tiger_param_groups(model), lr=1e-3)``."""
import torch
from torch import nn

# Tiger's classes of tensors: (lr multiplier, weight-decay multiplier, NaN-guard center). The lr
# multiplier None is RMS(θ) over the whole tensor, "row" one RMS(θ) per row of the last dimension.
PARAM_KINDS = {
    "bias": (0.5, 0.0, 0.0),
    "normalization": (0.5, 0.0, 1.0),  # a normalization layer's weight (gamma), initialised at 1
    "matrix": (None, 1.0, 0.0),
    "embedding": ("row", 1.0, 0.0),
}


def param_kind(param: torch.Tensor, group) -> str:
    """The group's param_kind; "auto" makes every tensor with ndim <= 1 a bias, the others matrices."""
    kind = group["param_kind"]
    if kind == "auto":
        return "bias" if param.ndim <= 1 else "matrix"
    return kind


def row_length(param: torch.Tensor) -> int:
    """An embedding table's rows run along its last dimension."""
    return param.shape[-1] if param.ndim and param.shape[-1] else 1


def tiger_constants(group, param, numel) -> tuple:
    """(lr constant, 1/(elements per RMS), decay multiplier, NaN center) of one tensor; ``numel``: the
    whole param's elements (every FSDP2 shard's, whose parts of Σθ² are added up before the update)."""
    lr_scale, decay, center = PARAM_KINDS[param_kind(param, group)]
    if lr_scale is None:  # a matrix: RMS over the whole tensor
        return 0.0, 1.0 / max(numel, 1), decay, center
    if lr_scale == "row":  # an embedding table: RMS of each row (rows lie whole in one FSDP2 shard)
        return 0.0, 1.0 / row_length(param), decay, center
    return lr_scale, 0.0, decay, center


def tiger_sum_of_squares_over(group, param) -> str:
    """Σθ² over each row of an embedding table (its per-row lr), else over the tensor."""
    return "row" if param_kind(param, group) == "embedding" else "tensor"


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
    """One group per kind of tensor (``PARAM_KINDS``), as Tiger's original classes them:
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
