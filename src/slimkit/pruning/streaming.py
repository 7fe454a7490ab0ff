"""Streaming support of the pruning methods (`slimkit.core.streaming`, driven by `slimkit.stream`).

- `magnitude` (one-shot, per tensor or one global threshold) and `nm` without fine-tuning run tensor
  by tensor on a bare checkpoint: the `sparse` codec, optionally with a k-means stage after them;
- one-shot `apoz` runs block by block on a Hugging Face folder (`slimkit.pruning.apoz_blocks`);
- `structured` and `weight-norm` need an architecture (they remove neurons).

>>> plan = magnitude_plan(MagnitudePruningConfig(sparsity=0.5), StreamPlan())
>>> plan.sparsity, plan.scope
(0.5, 'layer')
"""

from __future__ import annotations

import dataclasses

from slimkit.core.streaming import StreamPlan, StreamRefused, register_streaming
from slimkit.pruning.apoz_blocks import ApozWorker, check_one_shot

FIRST = "must come first (before sharing, once)"


def magnitude_plan(cfg, plan: StreamPlan) -> StreamPlan:
    """One-shot `MagnitudePruning`: the smallest |w| of each tensor, or below one global threshold."""
    if plan.coded or plan.pruned:
        raise StreamRefused(FIRST)
    if cfg.epochs or cfg.schedule.value != "oneshot":
        raise StreamRefused(f"fine-tunes on training data (schedule {cfg.schedule.value}, epochs {cfg.epochs}; "
                            "use schedule: oneshot, epochs: 0)")
    return dataclasses.replace(plan, sparsity=cfg.sparsity, value_dtype=cfg.value_dtype.value,
                               scope=cfg.scope.value)


def nm_plan(cfg, plan: StreamPlan) -> StreamPlan:
    """`NMPruning` without fine-tuning: n of every m consecutive inputs of each row kept."""
    if plan.coded or plan.pruned:
        raise StreamRefused(FIRST)
    if cfg.epochs:
        raise StreamRefused(f"fine-tunes on training data (epochs {cfg.epochs}; use epochs: 0)")
    return dataclasses.replace(plan, sparsity=1 - cfg.n / cfg.m, nm=(cfg.n, cfg.m), value_dtype=cfg.value_dtype.value)


register_streaming("magnitude", tensors=magnitude_plan, tensors_when="schedule: oneshot, epochs: 0")
register_streaming("nm", tensors=nm_plan, tensors_when="epochs: 0")
register_streaming("apoz", blocks=ApozWorker, check_blocks=check_one_shot, blocks_when="with rounds: 1 and epochs: 0",
                   needs="calibration and training data")
register_streaming("structured", needs="calibration data and an architecture")
register_streaming("weight-norm", needs="an architecture (it removes neurons)")
