"""AWQ and SmoothQuant block by block from disk (`slimkit.stream.layerwise`): the steps of
`slimkit.quantization.scaled`, one transformer block loaded at a time.

For each block, in order: its stages (Linears reading one input) are calibrated by one pass over the
block's cached inputs, scaled and folded (`ScaleRun.stage`; folds are found and checked on the block alone, run on
one cached input, so a fold never reaches outside the block); the scaled, still float block then
makes the next block's inputs (as in memory, where every stage's statistics come from the float
model); then its Linears are quantized. Linears outside the blocks (an untied LM head) are quantized
plainly (`rtn` / `int8`), as the GPTQ worker rounds them: calibrating them needs the whole model.

>>> worker = ScaledWorker(model, task, AWQConfig(bits=4, group_size=64))
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from slimkit.core.streaming import inside, register_streaming, step
from slimkit.dist.calibration import accumulate, linear_stages, plan_blocks
from slimkit.dist.collectives import shard
from slimkit.nn.quant_math import check_calibration
from slimkit.quantization.convert import note_skipped
from slimkit.quantization.fold import FoldFinder
from slimkit.quantization.scaled import ScaleRun


class ScaledWorker:
    """A `slimkit.core.streaming.BlockWorker` for `awq` and `smoothquant` (see the module doc)."""

    def __init__(self, model: nn.Module, task, cfg):
        self.model, self.task, self.cfg = model, task, cfg
        self.batches = shard(check_calibration(task.calibration(cfg.samples), f"{cfg.method} calibration data"))
        linears, self.embeddings, skipped = cfg._targets(model, None)
        note_skipped(model, skipped)
        self.targets = list(linears)
        self.run = ScaleRun(model, cfg)
        self.counts: Counter[str] = Counter()
        self.reused: set[str] = set()

    def plan(self, blocks: list[str], probe) -> dict[int, list] | None:
        stages, self.reused = linear_stages(self.model, self.task, probe, self.targets)
        found = plan_blocks(stages, blocks)
        return None if found is None else found[1]

    def outside(self, blocks: list[str]) -> None:
        rest = [n for n in self.targets if not inside(n, blocks)]
        if rest:
            self.cfg._plain(self.model, [(n, self.model.get_submodule(n)) for n in rest])
            self.counts[f"{self.cfg.method}: plain (outside the blocks)"] += len(rest)
        outside = [(n, m) for n, m in self.embeddings if not inside(n, blocks)]
        self.cfg._embeddings(self.model, [(n, self.model.get_submodule(n)) for n, _ in outside], None)

    def block(self, name: str, block: nn.Module, chain, stages: list, advance: bool) -> None:
        call = chain.calls[0]
        finder = FoldFinder(self.model, lambda: block(*call.args, **call.kwargs))
        layers = [n for stage in stages for n in stage]     # one pass for the block's stages, as in memory
        stats = accumulate(self.model, layers, chain.passes(block), not self.reused & set(layers),
                           self.cfg._needs_hessian) if layers else {}
        for stage in stages:
            self.run.stage(stage, stats, finder)
        step(chain, block, advance)
        names = [n for n in self.targets if inside(n, [name])]
        scaled = self.run.quantize(names)
        self.counts[f"{self.cfg.method}-scaled"] += scaled
        if len(names) > scaled:
            self.counts[f"{self.cfg.method}: plain (not reached by calibration)"] += len(names) - scaled


register_streaming("awq", blocks=ScaledWorker, blocks_when="(e.g. awq-int4)", needs="calibration data")
register_streaming("smoothquant", blocks=ScaledWorker, needs="calibration data")
