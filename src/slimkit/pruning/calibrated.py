"""Calibrated one-shot pruning for large models: Wanda and SparseGPT (configs and handlers; the math is
in `slimkit.pruning.sparsegpt`).

>>> import slimkit as sk
>>> sk.prune_(model, sk.WandaConfig(sparsity=0.5), data=task)          # 50% unstructured
>>> sk.prune_(model, sk.SparseGPTConfig(n=2, m=4), data=task)          # 2:4

Both run on calibration data (`slimkit.dist.calibration`) block by block on a transformer, as the
reference implementations do: a block's layers are calibrated by one pass over its inputs, pruned,
and the pruned block makes the next block's inputs, so later blocks see the pruned earlier ones
(elsewhere stage by stage, each stage pruned before the next one is calibrated). Linear and Conv2d
layers (a conv's weight as out x in*kh*kw, its inputs as im2col patches); layers the calibration never
reaches are pruned by magnitude with the same pattern
(reported). The zeros are stored through the `sparse` codec (N:M patterns get its compact `nm`
index), the kept values as `value_dtype` (float16 by default, rounded in memory the same way).
No fine-tuning: these methods are made to need none.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn, select_modules
from slimkit.core.task import Task
from slimkit.dist.calibration import channel_stats, hessian_stages, hessian_value
from slimkit.io.codec_nm import MAX_M
from slimkit.nn.quant_math import check_calibration
from slimkit.pruning.api import StoreDtype
from slimkit.pruning.masks import MaskSet
from slimkit.pruning.sparsegpt import keep_nm, keep_top_per_row, sparsegpt_prune, wanda_mask
from slimkit.pruning.unstructured import same_start, store_sparse

log = logging.getLogger("slimkit")
CALIBRATED = (nn.Linear, nn.Conv2d)


def _matrix(module: nn.Module) -> torch.Tensor:
    w = module.weight
    return w.reshape(w.shape[0], -1)


class _CalibratedPruning(MethodConfig):
    """Options shared by Wanda and SparseGPT: the pattern, the calibration, the stored dtypes."""

    family: ClassVar[Family] = Family.PRUNE
    sparsity: float = Field(0.5, ge=0, lt=1)   # unstructured: the share of each layer's weights set to zero
    n: int | None = None                       # N:M instead: n of every m consecutive inputs kept (2:4)
    m: int = 4
    samples: int = 128
    value_dtype: StoreDtype = StoreDtype.FLOAT16
    bias_dtype: StoreDtype = StoreDtype.FLOAT32

    @field_validator("samples")
    @classmethod
    def _samples(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be a positive integer, got {v}")
        return v

    @model_validator(mode="after")
    def _pattern(self):
        if self.n is not None and not 1 <= self.n < self.m <= MAX_M:
            raise ValueError(f"N:M sparsity needs 1 <= n < m <= {MAX_M}, got n={self.n}, m={self.m}")
        implied = None if self.n is None else 1 - self.n / self.m
        if implied is not None and "sparsity" in self.model_fields_set and abs(self.sparsity - implied) > 1e-9:
            raise ValueError(f"give either sparsity or n and m: {self.n}:{self.m} keeps {self.n / self.m:.0%}")
        return self

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}" if self.n is not None else f"{self.sparsity:.0%} unstructured"

    def layers(self, model: nn.Module, filter_fn: FilterFn | None = None
               ) -> tuple[dict[str, nn.Module], dict[str, str]]:
        """(layers this config prunes, {layer: why not}): plain Linear and Conv2d layers chosen by the
        selectors, N:M ones whose input size divides by m; a SlimError when none is left."""
        chosen = dict(select_modules(model, self.targets, CALIBRATED, filter_fn, self.ignore))
        skipped = {}
        if self.n is not None:
            for name, module in list(chosen.items()):
                if _matrix(module).shape[1] % self.m:
                    skipped[name] = f"input size {_matrix(module).shape[1]} is not a multiple of {self.m}"
                    del chosen[name]
        if not chosen:
            raise SlimError(f"{self.method}: no Linear/Conv2d layer to prune (check targets / ignore"
                            + (f"; {self.n}:{self.m} needs input sizes divisible by {self.m})" if self.n else ")"))
        return chosen, skipped

    def magnitude_mask(self, module: nn.Module) -> torch.Tensor:
        """The same pattern chosen by |w| (layers calibration never reaches; size estimates)."""
        scores = _matrix(module).detach().abs().float()
        keep = keep_top_per_row(scores, self.sparsity) if self.n is None else keep_nm(scores, self.n, self.m)
        return keep.reshape(module.weight.shape)

    def _prune(self, module: nn.Module, stats: dict) -> torch.Tensor:
        """Prune `module` in place from its input statistics; returns its keep-mask (weight's shape)."""
        raise NotImplementedError

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        if task is None:
            raise SlimError(f"{self.method} needs calibration data: pass data=<task> (e.g. the model's zoo task)")
        modules, skipped = self.layers(model, filter_fn)
        batches = check_calibration(task.calibration(self.samples), f"{self.method} calibration data")
        same_start(model)
        was_training = model.training
        model.eval()
        masks: dict[str, torch.Tensor] = {}
        hessian = type(self)._needs_hessian
        for stage, stats in hessian_stages(model, task, batches, list(modules), hessian=hessian, together=True):
            for name in stage:
                if name in stats:
                    masks[name] = self._prune(modules[name], stats[name])
        rest = [n for n in modules if n not in masks]
        for name in rest:
            masks[name] = self.magnitude_mask(modules[name])
        if rest:
            log.warning("%s: %d layer(s) not reached by calibration pruned by magnitude: %s", self.method, len(rest),
                        ", ".join(rest[:5]) + (", ..." if len(rest) > 5 else ""))
        if skipped:
            log.warning("%s: %d layer(s) stay dense: %s", self.method, len(skipped),
                        ", ".join(f"{n} ({w})" for n, w in list(skipped.items())[:5]))
        held = MaskSet()
        held.update(masks, modules)
        model.__dict__["slimkit_sparsity"] = store_sparse(held, self.value_dtype.value, self.bias_dtype.value)
        model.train(was_training)
        return model

    @classmethod
    def example(cls) -> _CalibratedPruning:
        return cls(sparsity=0.5, samples=64)

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> _CalibratedPruning | None:
        """Unstructured 30-70%, or 2:4."""
        if task is None or not any(type(m) in CALIBRATED for m in model.modules()):
            return None
        if trial.suggest_categorical(f"{cls.method}.pattern", ["unstructured", "2:4"]) == "2:4":
            return cls(n=2, m=4, samples=64)
        return cls(sparsity=round(trial.suggest_float(f"{cls.method}.sparsity", 0.3, 0.7), 4), samples=64)


@register_method
class WandaConfig(_CalibratedPruning):
    """Wanda (arXiv 2306.11695): prune the weights with the lowest |w| x input-channel L2 norm, per
    output row (unstructured) or per group of m inputs (N:M); kept weights unchanged."""

    method: ClassVar[str] = "wanda"
    summary: ClassVar[str] = "prune by |weight| x input norm per output row (50%, 2:4), no retraining (needs data)"
    _needs_hessian: ClassVar[bool] = False

    def _prune(self, module: nn.Module, stats: dict) -> torch.Tensor:
        keep = wanda_mask(_matrix(module), channel_stats(stats)["norm"], self.sparsity, self.n, self.m)
        with torch.no_grad():
            module.weight.mul_(keep.reshape(module.weight.shape).to(module.weight.dtype))
        return keep.reshape(module.weight.shape)


@register_method
class SparseGPTConfig(_CalibratedPruning):
    """SparseGPT (arXiv 2301.00774): OBS-style pruning with the inverse Hessian of the calibration
    inputs, the error of each pruned weight spread over the columns not yet visited."""

    method: ClassVar[str] = "sparsegpt"
    summary: ClassVar[str] = "prune with second-order error compensation (50%, 2:4), no retraining (needs data)"
    _needs_hessian: ClassVar[bool] = True
    block_size: int = Field(128, ge=1)
    damp: float = Field(0.01, gt=0, lt=1)

    def _prune(self, module: nn.Module, stats: dict) -> torch.Tensor:
        pruned, keep = sparsegpt_prune(_matrix(module), hessian_value(stats), self.sparsity, self.n, self.m,
                                       self.block_size, self.damp)
        with torch.no_grad():
            module.weight.copy_(pruned.reshape(module.weight.shape))
        return keep.reshape(module.weight.shape)
