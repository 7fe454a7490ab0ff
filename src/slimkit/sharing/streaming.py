"""Streaming support of the sharing methods (`slimkit.core.streaming`, driven by `slimkit.stream`).

- `kmeans` without fine-tuning runs tensor by tensor on a bare checkpoint: one codebook per tensor;
- `lowrank` without fine-tuning runs block by block on a Hugging Face folder (`LowRankWorker`);
- `hashed` needs training data.

>>> worker = LowRankWorker(model, task, LowRankConfig(energy=0.9, mode="pca"))
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import select_modules
from slimkit.core.streaming import AFTER_CODES, KMeansSpec, StreamPlan, StreamRefused, inside, register_streaming, step
from slimkit.dist.collectives import shard
from slimkit.sharing.apply_lowrank import RankRule, _matrix, _moment_hooks, _moments, choose_rank, factorize
from slimkit.surgery.edits import replace_module


def kmeans_plan(cfg, plan: StreamPlan) -> StreamPlan:
    """`KMeansSharing` without fine-tuning on a bare checkpoint: a codebook fitted per tensor."""
    if plan.coded:
        raise StreamRefused(AFTER_CODES)
    if cfg.finetune_epochs:
        raise StreamRefused(f"fine-tunes its codebooks on training data (finetune_epochs={cfg.finetune_epochs}; "
                            "set 0 for a bare checkpoint)")
    return dataclasses.replace(plan, kmeans=KMeansSpec(cfg.bits, cfg.init.value, cfg.solver.value, cfg.max_iter,
                                                       cfg.coding.value, cfg.seed),
                               allow_nonfinite=cfg.allow_nonfinite)


def check_lowrank_blocks(cfg) -> None:
    """A one-line SlimError unless the `LowRank` config runs without fine-tuning."""
    if cfg.finetune_epochs:
        raise SlimError(f"lowrank block by block does not fine-tune: set finetune_epochs: 0 (got "
                        f"{cfg.finetune_epochs}); fine-tuning needs the whole model in memory")


class LowRankWorker:
    """`slimkit.sharing.api.LowRank` without fine-tuning, as a `slimkit.core.streaming.BlockWorker`:
    each block's Linears factorized from the second moments of their inputs on the cached block
    inputs (mode pca; plain SVD in mode svd), measured while the unchanged block carries them to the
    next one, as the in-memory path does. Linears outside the blocks stay dense (their inputs would
    need the whole model's forward)."""

    def __init__(self, model: nn.Module, task, cfg):
        self.model, self.task, self.cfg = model, task, cfg
        self.batches = shard(task.calibration(cfg.calibration_samples))
        if not self.batches:
            raise SlimError("lowrank: the calibration data is empty")
        self.targets = [n for n, m in select_modules(model, cfg.targets, (nn.Linear,), None, cfg.ignore)]
        self.rule = RankRule(cfg.rank, cfg.energy, cfg.budget)
        self.aware = cfg.mode.value == "pca"
        self.counts: Counter[str] = Counter()

    def plan(self, blocks: list[str], probe) -> dict[int, list]:
        return {i: [n for n in self.targets if inside(n, [b])] for i, b in enumerate(blocks)
                if any(inside(n, [b]) for n in self.targets)}

    def outside(self, blocks: list[str]) -> None:
        kept = [n for n in self.targets if not inside(n, blocks)]
        if kept:
            self.counts["dense (outside the blocks)"] += len(kept)

    def block(self, name: str, block: nn.Module, chain, names: list[str], advance: bool) -> None:
        covs: dict = {}
        if names and self.aware:
            sums, counts, hooks = _moment_hooks([(n, self.model.get_submodule(n)) for n in names])
            try:
                chain.advance(block)   # the hooks see the unchanged block's inputs on the way
            finally:
                for h in hooks:
                    h.remove()
            covs = _moments(sums, counts)
        else:
            step(chain, block, advance)
        self._factorize(names, covs)

    def _factorize(self, names: list[str], covs: dict) -> None:
        ranks = self.model.__dict__.setdefault("slimkit_ranks", {})
        for name in names:
            layer = self.model.get_submodule(name)
            if self.aware and name not in covs:
                continue   # calibration never reached it: stays dense, as in memory
            rank = choose_rank(name, layer, self.rule, covs.get(name), self.cfg.damp)
            out, fan_in = _matrix(layer).shape
            if self.rule.rank is None and rank * (fan_in + out) >= out * fan_in:
                self.counts["dense (no saving)"] += 1
                continue
            replace_module(self.model, name, factorize(layer, rank, covs.get(name), self.cfg.damp))
            ranks[name] = rank
            self.counts[f"lowrank {self.cfg.mode.value}"] += 1


register_streaming("kmeans", tensors=kmeans_plan, tensors_when="finetune_epochs: 0")
register_streaming("lowrank", blocks=LowRankWorker, check_blocks=check_lowrank_blocks,
                   blocks_when="with finetune_epochs: 0", needs="an architecture (it splits layers in two)")
register_streaming("hashed", needs="training data")
