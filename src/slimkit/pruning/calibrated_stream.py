"""Wanda and SparseGPT block by block from disk (`slimkit.stream.layerwise`): the steps of
`slimkit.pruning.calibrated`, one transformer block loaded at a time.

For each block, in order: its layers are calibrated by one pass over the block's cached inputs and
pruned in place; the pruned block then makes the next block's inputs (as in memory, where later
blocks see the pruned earlier ones), and its pruned weights get the `sparse` codec. Linears
outside the blocks (an untied LM head) are pruned by magnitude with the same pattern: calibrating
them needs the whole model.

>>> worker = CalibratedPruneWorker(model, task, WandaConfig(n=2, m=4))
"""

from __future__ import annotations

import logging
from collections import Counter

from torch import nn

from slimkit.core.streaming import inside, register_streaming, step
from slimkit.dist.calibration import accumulate, linear_stages, plan_blocks
from slimkit.dist.collectives import shard
from slimkit.nn.quant_math import check_calibration
from slimkit.pruning.masks import MaskSet
from slimkit.pruning.unstructured import store_sparse

log = logging.getLogger("slimkit")


class CalibratedPruneWorker:
    """A `slimkit.core.streaming.BlockWorker` for `wanda` and `sparsegpt` (see the module doc)."""

    def __init__(self, model: nn.Module, task, cfg):
        self.model, self.task, self.cfg = model, task, cfg
        self.batches = shard(check_calibration(task.calibration(cfg.samples), f"{cfg.method} calibration data"))
        modules, skipped = cfg.layers(model)
        if skipped:
            log.warning("%s: %d layer(s) stay dense: %s", cfg.method, len(skipped), ", ".join(list(skipped)[:5]))
        self.targets = list(modules)
        self.counts: Counter[str] = Counter()
        self.reused: set[str] = set()
        self.info = {"sparsity": {}}

    def plan(self, blocks: list[str], probe) -> dict[int, list] | None:
        stages, self.reused = linear_stages(self.model, self.task, probe, self.targets)
        found = plan_blocks(stages, blocks)
        return None if found is None else found[1]

    def _store(self, masks: dict) -> None:
        modules = {n: self.model.get_submodule(n) for n in masks}
        held = MaskSet()
        held.update(masks, modules)
        self.info["sparsity"].update(store_sparse(held, self.cfg.value_dtype.value, self.cfg.bias_dtype.value))

    def outside(self, blocks: list[str]) -> None:
        rest = [n for n in self.targets if not inside(n, blocks)]
        if rest:
            self._store({n: self.cfg.magnitude_mask(self.model.get_submodule(n)) for n in rest})
            self.counts[f"{self.cfg.pattern} by magnitude (outside the blocks)"] += len(rest)

    def block(self, name: str, block: nn.Module, chain, stages: list, advance: bool) -> None:
        masks = {}
        layers = [n for stage in stages for n in stage]     # one pass for the block's layers, as in memory
        stats = accumulate(self.model, layers, chain.passes(block), not self.reused & set(layers),
                           self.cfg._needs_hessian) if layers else {}
        for layer in layers:
            if layer in stats:
                masks[layer] = self.cfg._prune(self.model.get_submodule(layer), stats[layer])
        step(chain, block, advance)     # the pruned (not yet rounded) block makes the next block's inputs
        rest = [n for n in self.targets if inside(n, [name]) and n not in masks]
        masks |= {n: self.cfg.magnitude_mask(self.model.get_submodule(n)) for n in rest}
        self._store(masks)
        self.counts[f"{self.cfg.method} {self.cfg.pattern}"] += len(masks) - len(rest)
        if rest:
            self.counts[f"{self.cfg.pattern} by magnitude (not reached by calibration)"] += len(rest)


register_streaming("wanda", blocks=CalibratedPruneWorker, blocks_when="(e.g. wanda-50)", needs="calibration data")
register_streaming("sparsegpt", blocks=CalibratedPruneWorker, needs="calibration data")
