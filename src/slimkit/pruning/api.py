"""Pruning configs and their handlers (`sk.prune_(model, config, data=task)`).

>>> import slimkit as sk
>>> from slimkit.pruning.api import MagnitudePruning
>>> sk.prune_(model, MagnitudePruningConfig(sparsity=0.92, scope="global", schedule="gradual", epochs=30), task)
"""

from __future__ import annotations

import logging
import math
from enum import Enum
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from slimkit.core.errors import ConfigError, SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn
from slimkit.core.task import Task, has_labels
from slimkit.pruning.finetune import training_data
from slimkit.pruning.structured import (
    activation_scores,
    apoz_scores,
    fraction_cut,
    mean_std_cut,
    norm_scores,
    param_count,
    prunable_groups,
    taylor_scores,
    trim_,
)
from slimkit.pruning.transformer import apply_heads_ffn_, find_blocks
from slimkit.pruning.unstructured import magnitude_prune_, nm_prune_, prunable, store_sparse

ONESHOT_SAFE = 0.5    # magnitude with epochs unset: above this sparsity, never one shot (see `for_data`)
AUTO_STEPS = 600      # ... but gradual pruning over fine-tuning on labelled data: at least this many steps,
AUTO_EPOCHS = 20      # in at most this many epochs (at least one),
AUTO_LR = 1e-3        # at this learning rate unless `lr` is given
log = logging.getLogger("slimkit")


class PruneConfigError(ConfigError):
    """An option outside its range (one line, naming the option)."""


class Scope(str, Enum):
    LAYER = "layer"
    GLOBAL = "global"


class Schedule(str, Enum):
    ONESHOT = "oneshot"        # prune once (then fine-tune for `epochs`)
    ITERATIVE = "iterative"    # Han et al. 2015: `steps` prune / retrain cycles
    GRADUAL = "gradual"        # Zhu & Gupta 2017: `steps` small prunes spread over training


class StoreDtype(str, Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"


def _in_range(method: str, name: str, value: Any, lo: float, hi: float, hi_open: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return  # pydantic reports the type error
    if not (lo <= value < hi if hi_open else lo <= value <= hi):
        bracket = ")" if hi_open else "]"
        raise PruneConfigError(f"{method}: {name} must be in [{lo:g}, {hi:g}{bracket}, got {value!r}")


class _Trainable(MethodConfig):
    """Fine-tuning options shared by the pruning methods."""

    epochs: int = Field(0, ge=0)
    lr: float = Field(5e-4, gt=0, le=1)
    batch_size: int = Field(32, ge=1)
    seed: int = 0

    def __init__(self, **data: Any):
        _in_range(self.method, "epochs", data.get("epochs", 0), 0, 10_000)
        _in_range(self.method, "lr", data.get("lr", 5e-4), 0, 1, hi_open=False)
        self._check(data)
        super().__init__(**data)

    def _check(self, data: dict) -> None:
        """Range checks that raise one-line errors before pydantic validation."""


@register_method
class MagnitudePruningConfig(_Trainable):
    """Unstructured magnitude pruning (Han et al. 2015; Zhu & Gupta 2017).

    Weights with the smallest |w| are set to exactly zero, per layer or over all selected layers,
    at once or along a schedule with fine-tuning; masks are held so pruned weights stay zero.
    Pruned weights are stored through the `sparse` codec.
    """

    method: ClassVar[str] = "magnitude"
    family: ClassVar[Family] = Family.PRUNE
    summary: ClassVar[str] = "zero the smallest weights (layer or global threshold), sparse storage"
    sparsity: float = Field(0.9, ge=0, lt=1)
    scope: Scope = Scope.LAYER
    schedule: Schedule = Schedule.ONESHOT
    steps: int = Field(10, ge=1)
    end_fraction: float = Field(0.7, gt=0, le=1)
    value_dtype: StoreDtype = StoreDtype.FLOAT32
    bias_dtype: StoreDtype = StoreDtype.FLOAT32

    def _check(self, data):
        _in_range(self.method, "sparsity", data.get("sparsity", 0.9), 0, 1)
        _in_range(self.method, "steps", data.get("steps", 10), 1, 10_000)
        _in_range(self.method, "end_fraction", data.get("end_fraction", 0.7), 0.01, 1, hi_open=False)
        if data.get("schedule", "oneshot") != "oneshot" and not data.get("epochs"):
            raise PruneConfigError(f"{self.method}: schedule {data['schedule']!r} needs epochs > 0")

    def for_data(self, task: Task | None) -> MagnitudePruningConfig:
        """This config as it runs on `task`'s data. With `epochs` left unset, a sparsity above
        ONESHOT_SAFE is not cut in one shot (that breaks most models): with labelled data it is
        reached gradually while fine-tuning, over AUTO_STEPS steps or AUTO_EPOCHS epochs, whichever
        is fewer epochs (a log line says so); without labels it is refused in one line saying what
        to pass. `epochs: 0` set explicitly prunes in one shot."""
        if self.epochs or "epochs" in self.model_fields_set or self.sparsity <= ONESHOT_SAFE:
            return self
        if not has_labels(task):
            raise SlimError(f"magnitude: {self.sparsity:.0%} sparsity in one shot, without fine-tuning, breaks most "
                            "models; pass labelled data (data=DataLoader of (inputs, target) batches) to prune "
                            f"gradually while fine-tuning, lower sparsity to {ONESHOT_SAFE:g} or less, or set epochs=0 "
                            "to prune in one shot anyway")
        per_epoch = len(training_data(task, self.batch_size, self.seed))
        epochs = max(1, min(AUTO_EPOCHS, math.ceil(AUTO_STEPS / max(1, per_epoch))))
        log.info("magnitude: %.0f%% sparsity with epochs unset: pruning gradually over %d epochs of fine-tuning "
                 "on the labelled data (set epochs to choose, epochs=0 for one shot)", 100 * self.sparsity, epochs)
        lr = self.lr if "lr" in self.model_fields_set else AUTO_LR
        return self.model_copy(update={"epochs": epochs, "schedule": Schedule.GRADUAL, "lr": lr})

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> MagnitudePruningConfig:
        """Global sparsity 0.3-0.95; gradual with fine-tuning when the task has labels."""
        sparsity = round(trial.suggest_float("magnitude.sparsity", 0.3, 0.95), 4)
        epochs = trial.suggest_int("magnitude.epochs", 0, 30, step=10) if has_labels(task) else 0
        return cls(sparsity=sparsity, scope=Scope.GLOBAL, epochs=epochs,
                   schedule=Schedule.GRADUAL if epochs else Schedule.ONESHOT)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        modules = prunable(model, self.targets, self.ignore, filter_fn)
        held = magnitude_prune_(model, task, modules, self.for_data(task))
        model.__dict__["slimkit_sparsity"] = store_sparse(held, self.value_dtype.value,
                                                          self.bias_dtype.value)
        return model

    @classmethod
    def example(cls) -> MagnitudePruningConfig:
        return cls(sparsity=0.8, scope=Scope.GLOBAL, epochs=0)


@register_method
class NMPruningConfig(_Trainable):
    """N:M semi-structured sparsity: n of every m consecutive input weights kept (2:4 default)."""

    method: ClassVar[str] = "nm"
    family: ClassVar[Family] = Family.PRUNE
    summary: ClassVar[str] = "N:M semi-structured sparsity (2:4), sparse storage"
    n: int = 2
    m: int = 4
    value_dtype: StoreDtype = StoreDtype.FLOAT32
    bias_dtype: StoreDtype = StoreDtype.FLOAT32

    def _check(self, data):
        m = data.get("m", 4)
        _in_range(self.method, "m", m, 2, 65)
        if isinstance(m, int):
            _in_range(self.method, "n", data.get("n", 2), 1, m)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        held = nm_prune_(model, task, prunable(model, self.targets, self.ignore, filter_fn), self)
        model.__dict__["slimkit_sparsity"] = store_sparse(held, self.value_dtype.value,
                                                          self.bias_dtype.value)
        return model


class Norm(str, Enum):
    L1 = "l1"
    L2 = "l2"


class Criterion(str, Enum):
    ACTIVATION = "activation"   # mean |activation| x outgoing weight norm (no labels needed)
    TAYLOR = "taylor"           # |activation x gradient| (Molchanov et al. 2017), needs labels


class _Structured(_Trainable):
    """Options shared by the methods that physically remove neurons / filters."""

    rounds: int = Field(1, ge=1)
    max_drop: float = 1.0          # validation points; a round that loses more is undone
    target_ratio: float | None = None
    min_channels: int = Field(2, ge=1)

    def _check(self, data):
        _in_range(self.method, "rounds", data.get("rounds", 1), 1, 1000)
        _in_range(self.method, "min_channels", data.get("min_channels", 2), 1, 1 << 20)
        if data.get("max_drop") is not None:
            _in_range(self.method, "max_drop", data["max_drop"], 0, 100, hi_open=False)

    def _run(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None, scorer, choose):
        if task is None:
            raise SlimError(f"{self.method} needs a task (example inputs to trace the model)")
        before = param_count(model)
        history = trim_(model, task, lambda m: prunable_groups(m, task, self.targets, self.ignore, filter_fn),
                        scorer, choose, self)
        model.__dict__["slimkit_trim"] = {"params_before": before, "params_after": param_count(model),
                                          "rounds": history}
        return model


@register_method
class APoZPruningConfig(_Structured):
    """Network Trimming (Hu et al. 2016): remove ReLU neurons / filters whose Average Percentage
    of Zeros over data exceeds the layer's mean + `std` standard deviations; retrain; repeat.
    Layers shrink physically (Linear rows and the next layer's columns; conv filters, BN entries
    and the downstream conv channels or flattened fc columns)."""

    method: ClassVar[str] = "apoz"
    family: ClassVar[Family] = Family.PRUNE
    summary: ClassVar[str] = "trim mostly-zero ReLU neurons/filters (APoZ), retrain, repeat"
    std: float = 1.0
    samples: int = Field(512, ge=1)
    rounds: int = Field(6, ge=1)
    epochs: int = Field(10, ge=0)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        if task is None:
            raise SlimError("apoz needs a task: data to measure activations on")
        return self._run(model, task, filter_fn, apoz_scores(task, self.samples), mean_std_cut(self.std))

    @classmethod
    def example(cls) -> APoZPruningConfig:
        return cls(rounds=1, epochs=0, max_drop=100.0)


@register_method
class NormPruningConfig(_Structured):
    """Structured weight-norm pruning (Li et al. 2017): remove the `ratio` of neurons / filters with
    the smallest L1 (or L2) norm from each selected layer, physically; optional retraining."""

    method: ClassVar[str] = "weight-norm"
    family: ClassVar[Family] = Family.PRUNE
    summary: ClassVar[str] = "remove the neurons/filters with the smallest L1/L2 norm"
    ratio: float = Field(0.5, ge=0, lt=1)
    norm: Norm = Norm.L1

    def _check(self, data):
        super()._check(data)
        _in_range(self.method, "ratio", data.get("ratio", 0.5), 0, 1)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        return self._run(model, task, filter_fn, norm_scores(1 if self.norm is Norm.L1 else 2),
                         fraction_cut(self.ratio))

    @classmethod
    def example(cls) -> NormPruningConfig:
        return cls(ratio=0.5, max_drop=100.0)


@register_method
class StructuredPruningConfig(_Structured):
    """Remove the least important units, physically. In transformer blocks (BERT-style, e.g.
    MiniLM): FFN intermediate neurons (`ratio`) and attention heads (`head_ratio`), importance =
    mean |activation| x the norm of the unit's outgoing weights on `samples` calibration inputs,
    then a least-squares refit of the output projections (`refit`). Elsewhere the traced neurons /
    filters (`ratio` per layer), by `criterion`: that activation score, or Taylor."""

    method: ClassVar[str] = "structured"
    family: ClassVar[Family] = Family.PRUNE
    summary: ClassVar[str] = "remove FFN neurons and attention heads (or neurons/filters) by activation"
    ratio: float = Field(0.5, ge=0, lt=1)
    head_ratio: float = Field(0.0, ge=0, lt=1)
    samples: int = Field(64, ge=1)
    refit: bool = True     # transformer blocks: least-squares refit of the output projections
    criterion: Criterion = Criterion.ACTIVATION   # outside transformer blocks

    def _check(self, data):
        super()._check(data)
        _in_range(self.method, "ratio", data.get("ratio", 0.5), 0, 1)
        _in_range(self.method, "head_ratio", data.get("head_ratio", 0.0), 0, 1)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        if task is None:
            raise SlimError(f"{self.method} needs a task: calibration data and example inputs")
        if not find_blocks(model):
            scorer = (taylor_scores(task) if self.criterion is Criterion.TAYLOR
                      else activation_scores(task, self.samples))
            return self._run(model, task, filter_fn, scorer, fraction_cut(self.ratio))
        if self.epochs:
            raise PruneConfigError(f"{self.method}: fine-tuning transformer blocks is not supported "
                                   "yet; set epochs=0")
        model.__dict__["slimkit_trim"] = apply_heads_ffn_(model, task, filter_fn, self)
        return model

    @classmethod
    def example(cls) -> StructuredPruningConfig:
        return cls(ratio=0.3, max_drop=100.0)


# Names before the `<Method>Config` scheme (CHANGELOG.md), kept so existing code runs unchanged.
APoZPruning = APoZPruningConfig
MagnitudePruning = MagnitudePruningConfig
NMPruning = NMPruningConfig
NormPruning = NormPruningConfig
StructuredPruning = StructuredPruningConfig
