"""Unstructured pruning on modules: magnitude (one-shot, iterative, gradual) and N:M masks,
then storage through the `sparse` codec. The math lives in `masks` and `schedules`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import FilterFn, select_modules
from slimkit.core.task import Task
from slimkit.dist.data_parallel import broadcast_
from slimkit.io.artifact import codec_chain, set_codec
from slimkit.pruning.finetune import finetune, training_data
from slimkit.pruning.masks import MaskSet, magnitude_masks, nm_mask, sparsity_of
from slimkit.pruning.schedules import event_iterations, polynomial_schedule

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def prunable(model: nn.Module, targets, ignore, filter_fn: FilterFn | None) -> dict[str, nn.Module]:
    """Plain Linear/Conv modules chosen by the selectors; an error when there are none."""
    chosen = dict(select_modules(model, targets, WEIGHTED, filter_fn, ignore))
    if not chosen:
        raise SlimError("no Linear/Conv layer to prune (check targets / ignore)")
    return chosen


def _magnitude(modules: dict[str, nn.Module], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    return magnitude_masks({k: m.weight for k, m in modules.items()}, sparsity, scope)


@torch.no_grad()
def same_start(model: nn.Module) -> None:
    """Under torchrun, give every rank rank 0's weights before masks are chosen, so all ranks
    prune the same entries (a no-op in one process)."""

    broadcast_([*model.parameters(), *model.buffers()])


def magnitude_prune_(model: nn.Module, task: Task | None, modules: dict[str, nn.Module],
                     cfg: Any) -> MaskSet:   # a MagnitudePruningConfig
    """Prune `modules` by weight magnitude following `cfg.schedule`; returns the final masks."""
    held = MaskSet()
    same_start(model)
    scope = cfg.scope.value
    if cfg.schedule.value == "oneshot" or cfg.epochs == 0:
        held.update(_magnitude(modules, cfg.sparsity, scope), modules)
        if cfg.epochs:
            finetune(model, task, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, held)
        return held
    per_epoch = len(training_data(task, cfg.batch_size, cfg.seed))
    total = cfg.epochs * per_epoch
    targets = polynomial_schedule(cfg.sparsity, cfg.steps)
    if cfg.schedule.value == "iterative":   # Han et al.: prune, retrain for a cycle, prune more
        cycle = max(1, round(cfg.end_fraction * cfg.epochs / cfg.steps))
        at = [min(i * cycle, cfg.epochs - 1) * per_epoch for i in range(cfg.steps)]
    else:                                   # Zhu & Gupta: small steps spread over training
        at = event_iterations(total, cfg.steps, cfg.end_fraction)
    events: dict[int, float] = {}
    for it, target in zip(at, targets, strict=True):
        events[it] = target                 # later events at the same iteration win
    last_epoch = max(events) // per_epoch

    def on_iteration(i: int) -> None:
        if i in events:
            held.update(_magnitude(modules, events[i], scope), modules)

    finetune(model, task, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, held, on_iteration,
             select_from=last_epoch)
    return held


def nm_prune_(model: nn.Module, task: Task | None, modules: dict[str, nn.Module],
              cfg: Any) -> MaskSet:   # an NMPruningConfig
    """N:M masks on every selected layer whose input size divides by M, then optional fine-tuning."""
    held = MaskSet()
    same_start(model)
    masks = {}
    for name, m in modules.items():
        if m.weight[0].numel() % cfg.m == 0:
            masks[name] = nm_mask(m.weight, cfg.n, cfg.m)
    if not masks:
        raise SlimError(f"no selected layer has an input size divisible by {cfg.m}")
    held.update(masks, modules)
    if cfg.epochs:
        finetune(model, task, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, held)
    return held


@torch.no_grad()
def store_sparse(held: MaskSet, value_dtype: str = "float32", bias_dtype: str = "float32") -> dict:
    """Set the `sparse` codec on every masked weight (optionally its values in float16) and
    round the in-memory tensors the same way, so the saved file reloads to identical outputs."""
    report = {}
    for name, (module, _) in held.masks.items():
        chain = [{"codec": "sparse"}]
        if value_dtype != "float32":
            module.weight.copy_(module.weight.to(getattr(torch, value_dtype)).float())
            chain.append({"codec": "cast", "to": value_dtype})
        set_codec(module, "weight", chain)
        if module.bias is not None and bias_dtype != "float32" and not codec_chain(module, "bias"):
            module.bias.copy_(module.bias.to(getattr(torch, bias_dtype)).float())
            set_codec(module, "bias", [{"codec": "cast", "to": bias_dtype}])
        report[name] = round(sparsity_of(module.weight), 6)
    return report
