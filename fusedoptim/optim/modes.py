"""The train/eval switch of a rule whose row declares ``Modes`` (``optim.rule``; Schedule-Free: the
params hold y while training, x for evaluation). ``optimizer_class`` adds ``TrainEvalSwitch`` to such a
rule's class: ``optimizer.train()`` and ``optimizer.eval()`` run the row's functions on each group not
yet in that mode and set its mode key, a group key saved with the param groups, so that a checkpoint
taken in either mode resumes in it. A step in eval mode is refused (``check_mode``, run by every step's
plan before any change)."""
import torch

from fusedoptim.optim.master_weights import rebuild_master, split_master
from fusedoptim.optim.quantization import dequantize, scale_name
from fusedoptim.optim.shards import local
from fusedoptim.optim.states import MASTER_RESIDUAL


class TrainEvalSwitch:
    """``train()`` and ``eval()``, as the Schedule-Free package's optimizers offer them."""

    @torch.no_grad()
    def train(self):
        """The params to their training point (y), in every group that is in eval mode."""
        switch_groups(self, to_train=True)

    @torch.no_grad()
    def eval(self):
        """The params to their evaluation point (x), in every group that is in train mode. Call it
        before validation and before saving the model for inference; train() after."""
        switch_groups(self, to_train=False)


def switch_groups(optimizer, to_train: bool) -> None:
    """Each group's params moved by the row's function, on fp32 copies (the states dequantized, θ its
    fp32 master under split master weights), written back rounded to nearest; params without the
    states the switch reads (no step yet) stay as they are, as the package leaves them."""
    rule = optimizer.rule
    modes = rule.modes
    kinds = {spec.name: spec.kind for spec in rule.states}
    function = modes.train if to_train else modes.eval
    for group in optimizer.param_groups:
        if group[modes.key] == to_train:
            continue
        params, states, stored = [], [], []
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if not all(name in state for name in modes.reads):
                continue
            shard, saved = local(param), {name: local(value) for name, value in state.items()}
            residual = saved.get(MASTER_RESIDUAL)
            params.append(shard.float() if residual is None else rebuild_master(shard, residual))
            states.append({name: dequantize(saved[name], saved[scale_name(name)], kinds[name], shard)
                           if scale_name(name) in saved else saved[name].float() for name in modes.reads})
            stored.append((shard, residual))
        function(params, states, group)
        for (shard, residual), value in zip(stored, params):
            if residual is None:
                shard.copy_(value)
            else:
                new_param, new_residual = split_master(value, shard.dtype, residual.dtype)
                shard.copy_(new_param)
                residual.copy_(new_residual)
        group[modes.key] = to_train


def check_mode(rule, group: dict, where: str) -> None:
    """A step in eval mode would move x as if it were y: refused, before any change, as the package refuses it."""
    if rule.modes is not None and not group[rule.modes.key]:
        raise RuntimeError(f"{rule.name}: {where} is in eval mode (optimizer.eval() was called, or the checkpoint "
                           "was saved in eval mode): its params hold the evaluation point x, not the point y "
                           "where gradients are taken. Call optimizer.train() before training and stepping")
