"""Low-rank factorization on a model.

Linear(in, out) -> Linear(in, r, bias=False) -> Linear(r, out); a convolution
Conv(in, out, k) -> Conv(in, r, k, bias=False) -> Conv(r, out, 1), the weight seen as an
(out, in * k...) matrix. The replacement is a plain `nn.Sequential`, recorded as a structural
edit, so a .slim file replays it on the base architecture and stores just the two factors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Task
from slimkit.dist.blocks import BlockChain, find_blocks
from slimkit.dist.collectives import all_reduce_int, all_reduce_min, all_reduce_sum, shard
from slimkit.sharing.errors import ShareConfigError
from slimkit.sharing.lowrank import (
    rank_for_budget,
    rank_for_energy,
    spectrum,
    svd_factors,
    whitened_factors,
)
from slimkit.sharing.train import fine_tune
from slimkit.surgery import replace_module

FACTORABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class RankRule:
    """How to choose each layer's rank: exactly one of `rank`, `energy`, `budget`."""

    rank: int | None = None
    energy: float | None = None
    budget: float | None = None


def _matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, fan_in) matrix."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def _patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of the layer's input as its weight matrix sees them: (n, fan_in)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer.padding, str):
        raise SlimError("lowrank: mode 'pca' does not handle string padding; use mode 'svd'")
    if isinstance(layer, nn.Conv1d):
        x, kernel = x.unsqueeze(-2), (1, *layer.kernel_size)
        stride, padding, dilation = (1, *layer.stride), (0, *layer.padding), (1, *layer.dilation)
    else:
        kernel, stride, padding, dilation = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    cols = nn.functional.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _moment_hooks(layers: list[tuple[str, nn.Module]]) -> tuple[dict, dict, list]:
    """(sums of x x^T, row counts, hook handles) filled by forward pre-hooks on `layers`."""
    sums = {name: torch.zeros(_matrix(m).shape[1], _matrix(m).shape[1], dtype=torch.float64)
            for name, m in layers}
    counts = dict.fromkeys(sums, 0)
    hooks = []
    for name, module in layers:
        def hook(mod, args, name=name):
            x = _patches(mod, args[0].detach()).double()
            sums[name] += x.T @ x
            counts[name] += x.shape[0]
        hooks.append(module.register_forward_pre_hook(hook))
    return sums, counts, hooks


def _moments(sums: dict, counts: dict) -> dict[str, torch.Tensor]:
    for name in sums:  # sums and counts over ranks (no-op in one process)
        all_reduce_sum(sums[name])
        counts[name] = all_reduce_int(counts[name])
    return {name: sums[name] / max(1, counts[name]) for name in sums}


@torch.no_grad()
def input_second_moments(model: nn.Module, task: Task, layers: list[tuple[str, nn.Module]],
                         samples: int) -> dict[str, torch.Tensor]:
    """E[x x^T] of each layer's input rows (patches for convolutions) over calibration data
    (split over the ranks of an initialised process group, sums and counts all-reduced).

    >>> covs = input_second_moments(model, task, [("fc1", model.fc1)], samples=256)
    """
    sums, counts, hooks = _moment_hooks(layers)
    was_training = model.training
    model.eval()
    try:
        for batch in shard(task.calibration(samples)):  # under torch.distributed: this rank's share
            task.forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return _moments(sums, counts)


@torch.no_grad()
def second_moments_by_block(model: nn.Module, task: Task, layers: list[tuple[str, nn.Module]],
                            samples: int) -> Iterator[dict[str, torch.Tensor]]:
    """`input_second_moments` in groups, so that only one block's matrices are held at a time:
    each repeated block's layers (`slimkit.dist.blocks`), measured on the block's cached inputs
    while they are carried to the next block, then the layers outside the blocks. The moments are
    those of the unchanged model, even when the caller replaces each group's layers at once.

    >>> for covs in second_moments_by_block(model, task, layers, 256): factorize(covs)
    """
    blocks = find_blocks(model)
    inside = {i: [(n, m) for n, m in layers if n.startswith(b + ".")] for i, b in enumerate(blocks)}
    outside = [(n, m) for n, m in layers if not any(n in dict(g) for g in inside.values())]
    was_training = model.training
    model.eval()
    try:
        chain = BlockChain.trace(model, task, shard(task.calibration(samples)), blocks) \
            if any(inside.values()) else None
        if all_reduce_min(torch.tensor([chain is not None], dtype=torch.int64))[0] == 0:
            yield input_second_moments(model, task, layers, samples)  # every rank takes this path
            return
        late = input_second_moments(model, task, outside, samples) if outside else {}
        last = max(i for i, group in inside.items() if group)
        for index, (_name, block) in enumerate(chain.blocks()):
            sums, counts, hooks = _moment_hooks(inside[index])
            try:
                chain.advance(block)  # the hooks see the block's inputs on the way
            finally:
                for h in hooks:
                    h.remove()
            if sums:
                yield _moments(sums, counts)
            if index == last:
                break
        if late:
            yield late
    finally:
        model.train(was_training)


def choose_rank(name: str, layer: nn.Module, rule: RankRule, cov: torch.Tensor | None, damp: float) -> int:
    """The rank for one layer; an explicit rank outside 1..min(out, fan_in) is a one-line error."""
    out, fan_in = _matrix(layer).shape
    limit = min(out, fan_in)
    if rule.rank is not None:
        if not 1 <= rule.rank <= limit:
            raise ShareConfigError(f"lowrank: rank {rule.rank} for {name} must be in 1..{limit} "
                                   f"({type(layer).__name__} {fan_in} -> {out})")
        return rule.rank
    if rule.energy is not None:
        return min(limit, rank_for_energy(spectrum(_matrix(layer), cov, damp), rule.energy))
    return min(limit, rank_for_budget(fan_in, out, rule.budget or 0.2))


def _pair(layer: nn.Module, rank: int) -> tuple[nn.Module, nn.Module]:
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=bias)
    if layer.groups != 1 or layer.padding_mode != "zeros":
        raise SlimError("lowrank: only ungrouped, zero-padded convolutions can be factorized")
    conv = type(layer)
    first = conv(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                 layer.dilation, bias=False)
    return first, conv(rank, layer.out_channels, 1, bias=bias)


def factorize(layer: nn.Module, rank: int, cov: torch.Tensor | None, damp: float) -> nn.Sequential:
    """The two-layer replacement of `layer` at `rank`."""
    w = _matrix(layer)
    a, b = svd_factors(w, rank) if cov is None else whitened_factors(w, cov, rank, damp)
    first, second = _pair(layer, rank)
    with torch.no_grad():
        first.weight.copy_(a.reshape(first.weight.shape))
        second.weight.copy_(b.reshape(second.weight.shape))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize_model(model: nn.Module, layers: list[tuple[str, nn.Module]], task: Task | None, *,
                    rule: RankRule, aware: bool, samples: int, damp: float, epochs: int, lr: float,
                    seed: int) -> dict[str, int]:
    """Factorize `layers` in place; returns {layer: rank} for the layers that got smaller."""
    chosen = [(n, m) for n, m in layers if isinstance(m, FACTORABLE)]
    groups: Iterable[dict[str, torch.Tensor]] = [{}]
    if aware:
        if task is None:
            raise SlimError("lowrank: mode 'pca' needs calibration data (pass data=...) or use mode 'svd'")
        groups = second_moments_by_block(model, task, chosen, samples)
    ranks: dict[str, int] = {}
    new_params: list[torch.Tensor] = []
    for covs in groups:  # pca: one block's layers at a time; svd: all at once
        for name, layer in [(n, m) for n, m in chosen if not aware or n in covs]:
            rank = choose_rank(name, layer, rule, covs.get(name), damp)
            out, fan_in = _matrix(layer).shape
            if rule.rank is None and rank * (fan_in + out) >= out * fan_in:
                continue  # no saving at this rank: keep the dense layer
            seq = factorize(layer, rank, covs.get(name), damp)
            replace_module(model, name, seq)
            ranks[name] = rank
            new_params += list(seq.parameters())
    if epochs > 0 and new_params:
        fine_tune(model, task, new_params, epochs, lr=lr, seed=seed)
    model.__dict__["slimkit_ranks"] = {**model.__dict__.get("slimkit_ranks", {}), **ranks}
    return ranks


def factorized_fraction(model: nn.Module, base: nn.Module) -> float:
    """Weights of the factorized layers now, as a fraction of the same layers in `base`."""
    ranks = model.__dict__.get("slimkit_ranks", {})
    before = sum(base.get_submodule(n).weight.numel() for n in ranks)
    after = sum(p.numel() for n in ranks for k, p in model.get_submodule(n).named_parameters()
                if k.endswith("weight"))
    return after / before if before else math.nan
