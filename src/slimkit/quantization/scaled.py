"""Activation-aware scaling before quantization: AWQ (4-bit weights) and SmoothQuant (W8A8).

>>> import slimkit as sk
>>> sk.quantize_(model, sk.AWQConfig(bits=4, group_size=64), data=task)      # needs calibration data
>>> sk.quantize_(model, sk.SmoothQuantConfig(alpha=0.5), data=task)

Both run stage by stage on calibration data (`slimkit.dist.calibration`; block by block on a
transformer, each block's stages calibrated by one pass): a stage's input statistics give
per-input-channel scales `s` (`slimkit.quantization.awq`), the stage's weight columns are multiplied
by `s` and its inputs divided by it, folded into the op that makes them where that is exact
(`slimkit.quantization.fold`), else kept in front of each layer (`slimkit.nn.input_scale`,
`fold_only: true` leaves such stages unscaled instead). The float function
is unchanged, so every stage's statistics come from the float model; the layers are quantized once all
stages are scaled: AWQ by group-wise round-to-nearest of the scaled (and clipped) weights into
`QuantLinear`, SmoothQuant into `Int8Linear` (per-channel int8 weights, dynamic per-token int8
activations, the path `int8` uses). Linears the calibration never reaches are quantized as plain
`rtn` / `int8` would (reported). `ScaleRun` holds one run's state, shared with the block-by-block
streaming worker (`slimkit.quantization.scaled_stream`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import field_validator
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn
from slimkit.core.task import Task
from slimkit.dist.calibration import channel_stats, hessian_stages, hessian_value
from slimkit.nn.input_scale import with_input_scale
from slimkit.nn.quant_linear import SCALE_DTYPES, Int8Linear
from slimkit.nn.quant_math import Granularity, check_calibration, rtn_quantize
from slimkit.quantization.api import ComputeDtype, _embedding_factory, _WeightQuant, set_compute_dtype
from slimkit.quantization.awq import (
    apply_clip,
    scaled_hessian,
    search_clip,
    search_scales,
    smooth_scales,
    weight_mean,
)
from slimkit.quantization.convert import convert, log, note_skipped, select_targets
from slimkit.quantization.fold import FoldFinder, fold_into, scale_columns


def _positive(v: int) -> int:
    if v < 1:
        raise ValueError(f"must be a positive integer, got {v}")
    return v


class ScaleRun:
    """One AWQ / SmoothQuant run over `model`: scale stages as calibration reaches them (`stage`),
    quantize layers when asked (`quantize`). Holds names and scales, never modules."""

    def __init__(self, model: nn.Module, cfg: AWQConfig | SmoothQuantConfig):
        self.model, self.cfg = model, cfg
        self.kept: dict[str, torch.Tensor | None] = {}   # layer -> scales kept in front of it (None: none)
        self.folded: dict[str, str] = {}                  # stage's first layer -> where its scales went
        self.ratios: dict[str, torch.Tensor] = {}         # AWQ: layer -> clip ratios (rows, groups)

    def stage(self, stage: list[str], stats: dict[str, dict], finder: FoldFinder) -> None:
        """Scale the layers of `stage` from their input accumulators `stats` (see the module doc)."""
        stage = [n for n in stage if n in stats]
        if not stage:
            return
        s = self.cfg._choose(self.model, stage, stats)
        target = None if s is None else finder.find(stage)
        if s is not None and target is None and self.cfg.fold_only:
            s = None
        if target is not None:       # folded: the model computes the same function from now on
            fold_into(self.model.get_submodule(target), s)
            self.folded[stage[0]] = target
            for name in stage:
                scale_columns(self.model.get_submodule(name), s)
        for name in stage:           # kept: columns scaled when quantized, so later stages see the float model
            self.kept[name] = None if target is not None else s
        weights = {n: self.scaled_weight(n) for n in stage}
        self.cfg._after(self, stage, stats, s, weights)

    def scaled_weight(self, name: str) -> torch.Tensor:
        """Layer `name`'s weight as it will be quantized: with its kept scales applied to the columns."""
        weight = self.model.get_submodule(name).weight
        s = self.kept.get(name)
        return weight if s is None else weight * s.to(weight.device, weight.dtype)[None, :]

    def quantize(self, names: list[str]) -> int:
        """Quantize the Linears `names`: scaled ones by the method, the others (not reached by
        calibration) plainly. Returns how many were scaled."""
        reached = [n for n in names if n in self.kept]
        for name in reached:
            if self.kept[name] is not None:
                scale_columns(self.model.get_submodule(name), self.kept[name])
        self.cfg._quantize(self, [(n, self.model.get_submodule(n)) for n in reached])
        rest = [(n, self.model.get_submodule(n)) for n in names if n not in self.kept]
        if rest:
            self.cfg._plain(self.model, rest)
        return len(reached)

    def report(self) -> None:
        n_kept = sum(s is not None for s in self.kept.values())
        log.info("%s: scales folded into %d op(s), kept in front of %d layer(s)", self.cfg.method, len(self.folded),
                 n_kept)


def _wrap(layer: nn.Module, s: torch.Tensor | None) -> nn.Module:
    return layer if s is None else with_input_scale(layer, s)


def _apply(cfg: AWQConfig | SmoothQuantConfig, model: nn.Module, task: Task | None,
           filter_fn: FilterFn | None) -> nn.Module:
    """The in-memory run of either method."""
    if task is None:
        raise SlimError(f"{cfg.method} needs calibration data: pass data=<task> (e.g. the model's zoo task)")
    linears, embeddings, skipped = cfg._targets(model, filter_fn)
    batches = check_calibration(task.calibration(cfg.samples), f"{cfg.method} calibration data")
    was_training = model.training
    model.eval()
    run = ScaleRun(model, cfg)
    finder = FoldFinder.for_task(model, task)
    for stage, stats in hessian_stages(model, task, batches, linears, hessian=cfg._needs_hessian, together=True):
        run.stage(stage, stats, finder)
    run.report()
    run.quantize(linears)
    note_skipped(model, skipped)
    cfg._embeddings(model, embeddings, task)
    model.train(was_training)
    return model


@register_method
class AWQConfig(_WeightQuant):
    """Activation-aware weight quantization (AWQ, arXiv 2306.00978): per-input-channel scales chosen on
    calibration activations (`grid` exponents of mean |x|, and with `duo_scaling` (default) also of mean |x| over
    the weights' relative mean magnitude, as AutoAWQ does), folded or kept as an input scale, optional
    per-group clipping search (`clip`), then group-wise round-to-nearest of the scaled weights.

    Calibration layers the forward never reaches fall back to round-to-nearest (reported)."""

    method: ClassVar[str] = "awq"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "activation-aware 4-bit weights (AWQ): searched channel scales, clipping (needs data)"
    encodes: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Embedding)
    _needs_hessian: ClassVar[bool] = True
    symmetric: bool = False
    group_size: int = 128
    grid: int = 20
    duo_scaling: bool = True
    clip: bool = True
    max_shrink: float = 0.5
    samples: int = 128
    fold_only: bool = False

    @field_validator("grid", "samples")
    @classmethod
    def _counts(cls, v: int) -> int:
        return _positive(v)

    @field_validator("max_shrink")
    @classmethod
    def _shrink(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"max_shrink must lie in [0, 1), got {v}")
        return v

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        return _apply(self, model, task, filter_fn)

    def _targets(self, model: nn.Module, filter_fn: FilterFn | None) -> tuple[list[str], list, dict[str, str]]:
        """(Linear names, embeddings, skipped) this config quantizes; says the group fallbacks once."""
        picked, embeddings, skipped = self._select(model, filter_fn)
        linears = [(n, m) for n, m in picked if type(m) is nn.Linear]
        skipped |= {n: f"{type(m).__name__}: awq scales Linear layers only" for n, m in picked
                    if type(m) is not nn.Linear}
        self._warn_fallbacks(linears, embeddings)
        return [n for n, _ in linears], embeddings, skipped

    def _fake(self, layer: nn.Module):
        gran, size = self._layout(layer)
        dtype = SCALE_DTYPES[self.scale_dtype.value]
        return lambda w: rtn_quantize(w, self.bits, self.symmetric, gran, size, False, dtype).dequantize()

    def _choose(self, model: nn.Module, stage: list[str], stats: dict) -> torch.Tensor:
        layers = [model.get_submodule(n) for n in stage]
        weights = [m.weight for m in layers]
        w_mean = weight_mean(weights, self._layout(layers[0])[1]) if self.duo_scaling else None
        s, _alpha = search_scales(weights, hessian_value(stats[stage[0]]), channel_stats(stats[stage[0]])["mean_abs"],
                                  self._fake(layers[0]), self.grid, w_mean)
        return s

    def _after(self, run: ScaleRun, stage: list[str], stats: dict, s: torch.Tensor | None,
               weights: dict[str, torch.Tensor]) -> None:
        """The clipping search, on the scaled weights and the Hessian of the scaled inputs."""
        if not self.clip or self.granularity is Granularity.TENSOR:
            return
        h = hessian_value(stats[stage[0]])
        h = h if s is None else scaled_hessian(h, s)
        for name in stage:
            run.ratios[name] = search_clip(weights[name], h, self.bits, self.symmetric,
                                           self._layout(run.model.get_submodule(name))[1], self.grid, self.max_shrink)

    def _quantize(self, run: ScaleRun, layers: list[tuple[str, nn.Module]]) -> None:
        def make(name: str, layer: nn.Module) -> nn.Module:
            if name in run.ratios:
                with torch.no_grad():
                    layer.weight.copy_(apply_clip(layer.weight, run.ratios.pop(name), self._layout(layer)[1],
                                                  self.symmetric))
            return _wrap(self._rtn(layer), run.kept[name])

        self._convert(run.model, layers, make, self._label("awq"))

    def _plain(self, model: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
        self._convert(model, layers, lambda _n, m: self._rtn(m), self._label("rtn") + " (not reached by calibration)")

    def _embeddings(self, model: nn.Module, embeddings: list, task: Task | None) -> None:
        self._quantize_embeddings(model, embeddings)

    @classmethod
    def example(cls) -> AWQConfig:
        return cls(bits=4, group_size=32, samples=64)

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> AWQConfig | None:
        """3 or 4 bits, groups of 32-128 (each layer falls back to a group dividing its inputs)."""
        if task is None or not any(type(m) is nn.Linear for m in model.modules()):
            return None
        return cls(bits=trial.suggest_int("awq.bits", 3, 4),
                   group_size=trial.suggest_categorical("awq.group_size", [32, 64, 128]), samples=64)


@register_method
class SmoothQuantConfig(MethodConfig):
    """SmoothQuant (arXiv 2211.10438): activation outliers migrated into the weights with per-channel
    scales `max|x|^alpha / max|W|^(1-alpha)` (folded, or kept as an input scale), then int8 weights and
    dynamic per-token int8 activations (`Int8Linear`, as `int8`), int8 embeddings."""

    method: ClassVar[str] = "smoothquant"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "W8A8 with activation outliers smoothed into the weights (needs data)"
    encodes: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Embedding)
    _needs_hessian: ClassVar[bool] = False
    alpha: float = 0.5
    samples: int = 128
    embeddings: bool = True
    fold_only: bool = False
    compute_dtype: ComputeDtype = ComputeDtype.AUTO
    allow_nonfinite: bool = False

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {v}")
        return v

    @field_validator("samples")
    @classmethod
    def _samples(cls, v: int) -> int:
        return _positive(v)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        return _apply(self, model, task, filter_fn)

    def _targets(self, model: nn.Module, filter_fn: FilterFn | None) -> tuple[list[str], list, dict[str, str]]:
        handled = (nn.Linear, nn.Conv2d) + ((nn.Embedding,) if self.embeddings else ())
        picked, skipped = select_targets(model, self.targets, self.ignore, filter_fn, handled)
        skipped |= {n: "Conv2d: smoothquant scales Linear layers only" for n, m in picked if type(m) is nn.Conv2d}
        return ([n for n, m in picked if type(m) is nn.Linear], [(n, m) for n, m in picked if type(m) is nn.Embedding],
                skipped)

    def _choose(self, model: nn.Module, stage: list[str], stats: dict) -> torch.Tensor:
        weights = [model.get_submodule(n).weight for n in stage]
        return smooth_scales(channel_stats(stats[stage[0]])["amax"], weights, self.alpha)

    def _after(self, run: ScaleRun, stage: list[str], stats: dict, s: torch.Tensor | None,
               weights: dict[str, torch.Tensor]) -> None:
        """Nothing after scaling."""

    def _quantize(self, run: ScaleRun, layers: list[tuple[str, nn.Module]]) -> None:
        convert(run.model, layers, lambda n, m: _wrap(Int8Linear.from_linear(m), run.kept[n]),
                f"smoothquant alpha={self.alpha:g} (w8a8 dynamic)")

    def _plain(self, model: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
        convert(model, layers, lambda _n, m: Int8Linear.from_linear(m),
                "int8 (w8a8 dynamic, not reached by calibration)")

    def _embeddings(self, model: nn.Module, embeddings: list, task: Task | None) -> None:
        convert(model, embeddings, _embedding_factory(8, True, None, False), "int8 embedding")
        set_compute_dtype(model, [model.get_submodule(n) for n, _ in embeddings], self.compute_dtype, task)

    @classmethod
    def example(cls) -> SmoothQuantConfig:
        return cls(samples=64)

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> SmoothQuantConfig | None:
        """Migration strength alpha 0.3-0.8."""
        if task is None or not any(type(m) is nn.Linear for m in model.modules()):
            return None
        return cls(alpha=round(trial.suggest_float("smoothquant.alpha", 0.3, 0.8), 2), samples=64)


__all__ = ["AWQConfig", "ScaleRun", "SmoothQuantConfig"]
