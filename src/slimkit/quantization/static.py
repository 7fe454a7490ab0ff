"""`int8-static`: int8 weights and int8 activations with scales fixed by calibration.

One calibration pass feeds every target Linear's input to an observer (`observers.py`); each
layer then becomes an `Int8Linear` with a fixed per-tensor input scale. With `search` (default)
the scale is the one, among the observer's and a grid of fractions of max |x|, whose int8 layer
output is closest to the float output on sampled calibration rows (`static_search.py`); a layer
whose best static output error is over `dynamic_fallback` times that of dynamic per-token int8
stays dynamic, and the report says so (on MiniLM: the attention keys). Conv2d layers (`conv`)
get int8 per-channel weights as in `int8`, run weight-only with fp32 activations (no integer
convolution is faster here, see `slimkit.nn.quant_conv`), so they need no calibration.

>>> sk.quantize_(model, Int8StaticConfig(observer="percentile", percentile=99.99), data=task)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import field_validator
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn
from slimkit.core.task import Task
from slimkit.dist.collectives import all_reduce_sum, is_distributed, shard
from slimkit.nn.quant_linear import Int8Linear
from slimkit.nn.quant_math import check_calibration
from slimkit.quantization.api import INT8_CONV, _embedding_factory
from slimkit.quantization.conv import int8_conv
from slimkit.quantization.convert import convert, note_skipped, select_targets
from slimkit.quantization.observers import Observer, ObserverKind
from slimkit.quantization.static_search import RowSampler, candidate_errors, choose_threshold, thresholds_for


def observe_inputs(model: nn.Module, task: Task, batches: list, names: list[str],
                   kind: ObserverKind, percentile: float,
                   samplers: dict[str, RowSampler] | None = None) -> dict[str, Observer]:
    """Observers of the inputs of the named modules over all calibration batches (and, with
    `samplers`, a sample of the input rows of each)."""
    observers = {n: Observer(kind, percentile) for n in names}

    def hook(n: str, x: torch.Tensor) -> None:
        observers[n].update(x)
        if samplers is not None:
            samplers[n].update(x)

    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: hook(n, args[0])) for n in names]
    try:
        with torch.no_grad():
            for batch in shard(batches):  # under torch.distributed: this rank's share
                task.forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
    for obs in observers.values():  # merged over ranks (no-op in one process)
        obs.all_reduce()
    return observers


@register_method
class Int8StaticConfig(MethodConfig):
    """int8 weights (per channel) and int8 activations with calibrated per-tensor scales."""

    method: ClassVar[str] = "int8-static"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "int8 weights + static int8 activations calibrated by an observer"
    observer: ObserverKind = ObserverKind.PERCENTILE
    percentile: float = 99.99
    samples: int = 256
    embeddings: bool = True
    conv: bool = True
    search: bool = True
    search_rows: int = 512
    dynamic_fallback: float | None = 4.0
    encodes: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Embedding, nn.Conv2d)
    allow_nonfinite: bool = False   # keep layers holding NaN/Inf float (default: refuse, naming the tensor)

    @field_validator("search_rows")
    @classmethod
    def _rows(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"search_rows must be a positive integer, got {v}")
        return v

    @field_validator("dynamic_fallback")
    @classmethod
    def _fallback(cls, v: float | None) -> float | None:
        if v is not None and not v >= 1:
            raise ValueError(f"dynamic_fallback must be at least 1 (or null: never), got {v}")
        return v

    @field_validator("percentile")
    @classmethod
    def _percentile(cls, v: float) -> float:
        if not 0 < v <= 100:
            raise ValueError(f"percentile must lie in (0, 100], got {v}")
        return v

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        handled = (nn.Linear,) + ((nn.Embedding,) if self.embeddings else ()) + ((nn.Conv2d,) if self.conv else ())
        picked, skipped = select_targets(model, self.targets, self.ignore, filter_fn, handled)
        linears = [(n, m) for n, m in picked if type(m) is nn.Linear]
        if task is None:
            raise SlimError("int8-static needs calibration data: pass data=<task>")
        batches = check_calibration(task.calibration(self.samples), "int8-static calibration data")
        was_training = model.training
        model.eval()
        per_batch = -(-self.search_rows // max(1, len(shard(batches))))
        samplers = {n: RowSampler(per_batch) for n, _ in linears} if self.search else None
        observers = observe_inputs(model, task, batches, [n for n, _ in linears], self.observer,
                                   self.percentile, samplers)
        reached = [(n, m) for n, m in linears if observers[n].count_]
        scales, dynamic = self._scales(reached, observers, samplers)
        how = f"int8 static ({self.observer.value}{', output-searched' if self.search else ''})"
        convert(model, [(n, m) for n, m in reached if n in scales],
                lambda n, m: Int8Linear.from_linear(m, scales[n]), how, skipped)
        for name, ratio in dynamic.items():
            convert(model, [(name, model.get_submodule(name))], lambda _n, m: Int8Linear.from_linear(m),
                    f"int8 dynamic per-token (a static scale's output error is {ratio:.1f}x dynamic's)")
        unreached = {n: "not reached by calibration" for n, _ in linears if not observers[n].count_}
        note_skipped(model, unreached)
        embeddings = [(n, m) for n, m in picked if type(m) is nn.Embedding]
        convert(model, embeddings, _embedding_factory(8, True, None, False), "int8 embedding")
        convert(model, [(n, m) for n, m in picked if type(m) is nn.Conv2d], lambda _n, m: int8_conv(m), INT8_CONV)
        model.train(was_training)
        return model

    def _scales(self, reached: list, observers: dict[str, Observer], samplers: dict | None
                ) -> tuple[dict[str, float], dict[str, float]]:
        """({layer: static input scale}, {layer kept dynamic: static / dynamic output error})."""

        scales, dynamic = {}, {}
        for name, m in reached:
            obs = observers[name]
            if samplers is None:
                scales[name] = obs.scale()
                continue
            thresholds = thresholds_for(obs.threshold(), obs.max_)
            rows = samplers[name].rows()
            errors = candidate_errors(rows, m.weight, thresholds) if rows.numel() else \
                torch.zeros(len(thresholds) + 1, dtype=torch.float64)
            if is_distributed():   # every rank chooses from the same sums
                errors = all_reduce_sum(errors)
            threshold, ratio = choose_threshold(thresholds, errors)
            if self.dynamic_fallback is not None and ratio > self.dynamic_fallback:
                dynamic[name] = ratio
            else:
                scales[name] = max(threshold, 1e-12) / 127.0
        return scales, dynamic


# Names before the `<Method>Config` scheme (CHANGELOG.md), kept so existing code runs unchanged.
Int8Static = Int8StaticConfig
