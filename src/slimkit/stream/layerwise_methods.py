"""What `slimkit.stream.layerwise` does inside each block, per method: GPTQ and activation-aware low-rank
(APoZ: `slimkit.stream.layerwise_apoz`).

A worker holds target layer *names* (never modules: a module held here would keep its weights
after the block is emptied) and offers four steps the driver calls in order: `plan` (on the probe
forward, every block loaded on demand), `outside` (layers outside the blocks, before any block
runs), then per block `block` (calibrate, compress, and carry the cached inputs to the next block).

>>> worker = worker_for(model, task, GPTQ(bits=4))
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import select_modules
from slimkit.dist.collectives import shard
from slimkit.nn.quant_linear import SCALE_DTYPES, QuantLinear
from slimkit.nn.quant_math import check_calibration, rtn_quantize
from slimkit.quantization.convert import convert, note_skipped
from slimkit.quantization.gptq import gptq_quantize, hessian_value
from slimkit.quantization.sequential import accumulate, collect_hessians, linear_stages, plan_blocks
from slimkit.sharing.apply_lowrank import RankRule, _matrix, _moment_hooks, _moments, choose_rank, factorize
from slimkit.stream.layerwise_apoz import ApozWorker
from slimkit.stream.layerwise_blocks import inside, step
from slimkit.surgery.edits import replace_module


class GptqWorker:
    """The steps of `slimkit.quantization.api.GPTQ.apply`, stage by stage (same Hessians, same codes).
    Linears outside the blocks after them (BERT's pooler) get round-to-nearest: calibrating them
    would need the whole model's forward."""

    def __init__(self, model: nn.Module, task, cfg):
        self.model, self.task, self.cfg = model, task, cfg
        self.batches = shard(check_calibration(task.calibration(cfg.samples), "gptq calibration data"))
        linears, embeddings, skipped = cfg._select(model, None)
        skipped |= {n: f"{type(m).__name__}: not layer by layer" for n, m in linears if type(m) is not nn.Linear}
        note_skipped(model, skipped)
        self.targets = dict.fromkeys(n for n, m in linears if type(m) is nn.Linear)   # names, in order
        self.embeddings = [n for n, _ in embeddings]
        self.dtype = SCALE_DTYPES[cfg.scale_dtype.value]
        self.counts: Counter[str] = Counter()
        self.before: list = []
        self.reused: set[str] = set()

    def plan(self, blocks: list[str], probe) -> dict[int, list] | None:
        stages, self.reused = linear_stages(self.model, self.task, probe, list(self.targets))
        found = plan_blocks(stages, blocks)
        if found is None:
            return None
        self.before, per_block, _after = found
        return per_block

    def outside(self, blocks: list[str]) -> None:
        for stage in self.before:   # Linears before the blocks: their forward stops before any block
            self._gptq(stage, collect_hessians(self.model, self.task, self.batches, stage,
                                               stop_early=not self.reused & set(stage)))
        self._rtn([n for n in self.targets if not inside(n, blocks)])
        self.cfg._quantize_embeddings(self.model, [(n, self.model.get_submodule(n)) for n in self.embeddings
                                                   if not inside(n, blocks)])

    def block(self, name: str, block: nn.Module, chain, stages: list, advance: bool) -> None:
        for stage in stages:
            self._gptq(stage, accumulate(self.model, stage, chain.passes(block), not self.reused & set(stage)))
        step(chain, block, advance)
        self._rtn([n for n in self.targets if inside(n, [name])])

    def _take(self, name: str) -> nn.Module:
        del self.targets[name]
        return self.model.get_submodule(name)

    def _layer(self, linear: nn.Module, qw) -> nn.Module:
        return QuantLinear.from_quantized(qw, linear.bias, self.cfg.symmetric, self.cfg.scale_dtype.value)

    def _gptq(self, stage: list[str], hessians: dict[str, dict]) -> None:
        cfg = self.cfg

        def make(name: str, linear: nn.Module) -> nn.Module:
            qw = gptq_quantize(linear.weight, hessian_value(hessians[name]), cfg.bits, cfg.symmetric,
                               cfg.granularity, cfg.group_size, cfg.act_order, cfg.damp, cfg.block_size, self.dtype)
            return self._layer(linear, qw)

        picked = [(n, self._take(n)) for n in stage if n in hessians]
        convert(self.model, picked, make, cfg._label("gptq"))
        self.counts[cfg._label("gptq")] += len(picked)

    def _rtn(self, names: list[str]) -> None:
        """Round-to-nearest for target Linears calibration did not reach (as `GPTQ.apply` does)."""

        cfg = self.cfg

        def rtn(_name: str, linear: nn.Module) -> nn.Module:
            return self._layer(linear, rtn_quantize(linear.weight, cfg.bits, cfg.symmetric, cfg.granularity,
                                                    cfg.group_size, False, self.dtype))

        picked = [(n, self._take(n)) for n in names if n in self.targets]
        if picked:
            convert(self.model, picked, rtn, cfg._label("rtn") + " (not reached by calibration)")
            self.counts[cfg._label("rtn")] += len(picked)


class LowRankWorker:
    """`slimkit.sharing.api.LowRank` without fine-tuning: each block's Linears factorized from the
    second moments of their inputs on the cached block inputs (mode pca; plain SVD in mode svd),
    measured while the unchanged block carries them to the next one, as the in-memory path does.
    Linears outside the blocks stay dense (their inputs would need the whole model's forward)."""

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


def worker_for(model: nn.Module, task, cfg):
    """The worker of a `GPTQ`, `LowRank` or one-shot `APoZPruning` config."""
    if cfg.method == "apoz":
        return ApozWorker(model, task, cfg)
    return GptqWorker(model, task, cfg) if cfg.method == "gptq" else LowRankWorker(model, task, cfg)
