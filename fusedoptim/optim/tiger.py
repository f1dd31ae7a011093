"""Tiger's host side: the constants of each tensor's class (``optim.param_groups.PARAM_KINDS``), laid out
once per launch plan by ``optim.sums``, as are its declared sums (the NaN count of each gradient, Σθ² of
each tensor or of each row of an embedding table): a step adds no torch op per tensor.
"""
from fusedoptim.optim.param_groups import PARAM_KINDS, param_kind, row_length


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
