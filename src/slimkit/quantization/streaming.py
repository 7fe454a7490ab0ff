"""Streaming support of the quantization methods (`slimkit.core.streaming`, driven by `slimkit.stream`).

- `int8` and `rtn` run tensor by tensor on a bare checkpoint: affine codes, per row or group-wise;
- `gptq` runs block by block on a Hugging Face folder (`GptqWorker`): the steps of `GPTQ.apply`,
  stage by stage, with the same Hessians and the same codes;
- `int8-static` and `qat` need data a bare checkpoint does not have.

>>> worker = GptqWorker(model, task, GPTQConfig(bits=4))
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.streaming import AFTER_CODES, QuantSpec, StreamPlan, StreamRefused, inside, register_streaming, step
from slimkit.core.text import clean
from slimkit.core.torch_utils import first_nonfinite
from slimkit.dist.calibration import accumulate, collect_hessians, linear_stages, plan_blocks
from slimkit.dist.collectives import shard
from slimkit.nn.quant_linear import SCALE_DTYPES, QuantLinear
from slimkit.nn.quant_math import check_calibration, rtn_quantize
from slimkit.quantization.convert import note_skipped
from slimkit.quantization.gptq import gptq_quantize, hessian_value


def int8_plan(cfg, plan: StreamPlan) -> StreamPlan:
    """`Int8` on a bare checkpoint: 8-bit per-row codes for Linear weights and embeddings (as asked)."""
    if plan.coded:
        raise StreamRefused(AFTER_CODES)
    return dataclasses.replace(plan, quant=QuantSpec(8) if cfg.linear else None,
                               embedding_quant=QuantSpec(8) if cfg.embeddings else None,
                               allow_nonfinite=cfg.allow_nonfinite)


def rtn_plan(cfg, plan: StreamPlan) -> StreamPlan:
    """`WeightOnly` (round-to-nearest) on a bare checkpoint: per row or group-wise scales."""
    if plan.coded:
        raise StreamRefused(AFTER_CODES)
    gran = cfg.granularity.value
    if gran == "tensor":
        raise StreamRefused("uses one scale per tensor (granularity: tensor), not supported when streaming: "
                            "use channel or group")
    group = cfg.group_size if gran == "group" else None
    embedding = None if not cfg.embedding_bits else QuantSpec(
        cfg.embedding_bits, True, cfg.embedding_group_size, cfg.scale_dtype.value, True)
    return dataclasses.replace(plan, quant=QuantSpec(cfg.bits, cfg.symmetric, group, cfg.scale_dtype.value, cfg.mse),
                               embedding_quant=embedding, allow_nonfinite=cfg.allow_nonfinite)


class GptqWorker:
    """The steps of `slimkit.quantization.api.GPTQ.apply`, stage by stage (same Hessians, same codes),
    as a `slimkit.core.streaming.BlockWorker`. Linears outside the blocks after them (BERT's pooler)
    get round-to-nearest: calibrating them would need the whole model's forward."""

    def __init__(self, model: nn.Module, task, cfg):
        self.model, self.task, self.cfg = model, task, cfg
        self.batches = shard(check_calibration(task.calibration(cfg.samples), "gptq calibration data"))
        linears, embeddings, skipped = cfg._select(model, None)
        skipped |= {n: f"{type(m).__name__}: not layer by layer" for n, m in linears if type(m) is not nn.Linear}
        note_skipped(model, skipped)
        cfg._warn_fallbacks([(n, m) for n, m in linears if type(m) is nn.Linear], embeddings)
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

    def _take(self, name: str) -> nn.Module | None:
        """The Linear `name`, now loaded; None when it holds NaN/Inf and `allow_nonfinite` keeps it
        float (without it, a one-line `SlimError` naming the tensor, as `apply_` gives)."""
        del self.targets[name]
        module = self.model.get_submodule(name)
        found = first_nonfinite(iter([(f"{name}.weight", module.weight)]))
        if found is None:
            return module
        if not self.cfg.allow_nonfinite:
            raise SlimError(f"{self.cfg.method}: {clean(found[0])} has {found[1]:,} non-finite (NaN/Inf) value(s); "
                            "fix the weights, leave the layer out with `ignore`, or set allow_nonfinite: true to "
                            "keep such layers float")
        return None

    def _layer(self, linear: nn.Module, qw) -> nn.Module:
        return QuantLinear.from_quantized(qw, linear.bias, self.cfg.symmetric, self.cfg.scale_dtype.value)

    def _gptq(self, stage: list[str], hessians: dict[str, dict]) -> None:
        cfg = self.cfg

        def make(name: str, linear: nn.Module) -> nn.Module:
            qw = gptq_quantize(linear.weight, hessian_value(hessians[name]), cfg.bits, cfg.symmetric,
                               *cfg._layout(linear), cfg.act_order, cfg.damp, cfg.block_size, self.dtype)
            return self._layer(linear, qw)

        picked = [(n, m) for n in stage if n in hessians for m in [self._take(n)] if m is not None]
        cfg._convert(self.model, picked, make, cfg._label("gptq"))
        self.counts[cfg._label("gptq")] += len(picked)

    def _rtn(self, names: list[str]) -> None:
        """Round-to-nearest for target Linears calibration did not reach (as `GPTQ.apply` does)."""

        cfg = self.cfg

        def rtn(_name: str, linear: nn.Module) -> nn.Module:
            return self._layer(linear, rtn_quantize(linear.weight, cfg.bits, cfg.symmetric, *cfg._layout(linear),
                                                    False, self.dtype))

        picked = [(n, m) for n in names if n in self.targets for m in [self._take(n)] if m is not None]
        if picked:
            cfg._convert(self.model, picked, rtn, cfg._label("rtn") + " (not reached by calibration)")
            self.counts[cfg._label("rtn")] += len(picked)


register_streaming("int8", tensors=int8_plan)
register_streaming("rtn", tensors=rtn_plan)
register_streaming("gptq", blocks=GptqWorker, blocks_when="(e.g. int4)", needs="calibration data")
register_streaming("int8-static", needs="calibration data")
register_streaming("qat", needs="training data")
