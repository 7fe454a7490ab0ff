"""Knowledge distillation: a large model teaches a small one.

>>> import slimkit as sk
>>> from slimkit.distillation import DistillConfig, distill, shrink_mlp
>>> teacher = sk.zoo.load("lenet-300-100")
>>> student = distill(teacher, shrink_mlp(teacher, (32, 16)), task, DistillConfig(epochs=60))

As a recipe stage (`method: distill`), the model being compressed is the teacher and the
config derives the student: `student: [32, 16]` shrinks an MLP's hidden widths,
`student: {prune: 0.75, criterion: l2}` (or `{widths: [8, 6]}`) cuts the teacher down by structured
pruning keeping its most important units with their weights (any model the pruner supports, e.g.
lenet5), `student: builtin:lenet5` takes a smaller zoo model, `keep: [1, 3, 5]` (or `every: 2`)
keeps some transformer layers with the teacher's weights.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.original import carry_original, remember_original
from slimkit.core.select import FilterFn
from slimkit.core.task import Task
from slimkit.core.user_batches import input_names
from slimkit.core.user_task import Metric, task_from
from slimkit.dist.collectives import init as init_distributed
from slimkit.distillation.data import Source, as_source, text_task_source
from slimkit.distillation.objective import Objective, Weights
from slimkit.distillation.students import keep_layers, pruned_student, reinitialise_, shrink_mlp, zoo_student
from slimkit.train.loop import EpochInfo, FitResult, LoopSettings, fit


class StudentInit(str, Enum):
    RANDOM = "random"      # fresh weights (seeded)
    TEACHER = "teacher"    # the teacher's most important units, with their weights
    TRAINED = "trained"    # a zoo student's own trained weights


class FeatureLoss(str, Enum):
    MSE = "mse"
    COSINE = "cosine"


class Schedule(str, Enum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class PruneCriterion(str, Enum):
    L1 = "l1"
    L2 = "l2"
    ACTIVATION = "activation"
    TAYLOR = "taylor"


class PrunedStudent(BaseModel):
    """A student cut from the teacher by structured pruning (`students.pruned_student`):
    `prune` = fraction of units removed from every prunable layer, or `widths` = units kept per
    layer group; the kept units keep the teacher's weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prune: float | None = Field(None, gt=0, lt=1, description="fraction of units removed per layer")
    widths: list[int] | None = Field(None, description="units kept in each prunable layer group")
    criterion: PruneCriterion = PruneCriterion.L2

    @model_validator(mode="after")
    def _one_size(self) -> PrunedStudent:
        if (self.prune is None) == (self.widths is None):
            raise ValueError("give exactly one of prune: <fraction of units removed> or widths: [units per layer]")
        return self


@register_method
class DistillConfig(MethodConfig):
    """Train a smaller student to imitate the model (its teacher)."""

    method: ClassVar[str] = "distill"
    family: ClassVar[Family] = Family.DISTILL
    summary: ClassVar[str] = "knowledge distillation into a smaller student (KD, hints, attention)"

    student: list[int] | PrunedStudent | str | None = Field(
        None, description="MLP hidden widths [32, 16]; {prune: 0.75, criterion: l2} (structured pruning "
        "of the teacher); or a smaller zoo model, builtin:NAME")
    keep: list[int] | None = Field(None, description="transformer layers to keep")
    every: int | None = Field(None, ge=1, description="keep every k-th transformer layer")
    init: StudentInit | None = Field(None, description="student weights: random (default for MLP widths and zoo "
                                     "models), teacher (default for a pruned student), trained (a zoo model's own)")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term")
    hidden_weight: float = Field(0.0, ge=0, description="weight of hidden-state hints")
    hidden_loss: FeatureLoss = FeatureLoss.MSE
    hint_layers: list[str] | None = Field(None, description="modules whose outputs the student matches to the "
                                          "teacher's same-named modules (FitNets hints weighted by hidden_weight, "
                                          "through a learned projection where widths differ), e.g. [fc1, fc2]")
    attention_weight: float = Field(0.0, ge=0, description="weight of attention transfer")
    mixup: float = Field(0.0, ge=0, description="mixup Beta(a, a) on float inputs; 0 = off")
    text: str | None = Field(None, description="extra training text file, one sentence per line")
    corpora: list[str] = Field(default_factory=list, description="embedded corpora added to a text task's "
                               "training text (e.g. [libdocs]); their held-out part joins validation")
    augment: float = Field(0.0, ge=0, le=1, description="fraction of sentences augmented each epoch (text)")
    bf16: bool = Field(False, description="forward passes under bfloat16 autocast (faster on CPUs with AMX)")
    token_weight: float = Field(0.0, ge=0, description="weight of a token-level loss (hidden_loss) between "
                                "the student's and the teacher's last-layer states of every token (encoders)")
    cache_teacher: bool = Field(False, description="text: run the teacher once over the training text and "
                                "reuse its token states every epoch (only the student runs in training)")
    freeze: list[str] = Field(default_factory=list, description="parameters kept as they are during "
                              "distillation, by name prefix (e.g. [embeddings.word_embeddings])")
    epochs: int = Field(60, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Schedule = Schedule.COSINE
    warmup: float = Field(0.0, ge=0, lt=1)
    patience: int | None = Field(None, ge=1)
    seed: int = 0
    progress: bool = False
    time_limit: float | None = Field(None, gt=0, description="seconds; no epoch starts after it")
    time_schedule: bool = Field(False, description="the LR schedule runs to time_limit, training stops at it")

    @field_validator("student", mode="before")
    @classmethod
    def _pruned_student_form(cls, value: object) -> object:
        """A mapping is a pruned student: report its own error, not the other forms'."""
        if not isinstance(value, dict):
            return value
        try:
            return PrunedStudent(**value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where}: {msg}" if where else msg) from None

    @classmethod
    def example(cls) -> DistillConfig:
        return cls(student=[16, 8], epochs=3)

    def settings(self) -> LoopSettings:
        return LoopSettings(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                            schedule=self.schedule.value, warmup=self.warmup, patience=self.patience,
                            seed=self.seed, progress=self.progress, time_limit=self.time_limit,
                            time_schedule=self.time_schedule, label="distilling")

    def make_student(self, teacher: nn.Module, data: object | None = None) -> nn.Module:
        """The student this config derives from `teacher` (`data`: the task a pruned student's
        importance is measured on; by default the zoo model's own)."""
        if self.student is not None and (self.keep is not None or self.every is not None):
            raise SlimError("give either student (MLP widths) or keep/every (transformer layers)")
        init = self.init.value if self.init is not None else None
        if isinstance(self.student, PrunedStudent):
            if init not in (None, "teacher", "random"):
                raise SlimError(f"init: {init} does not apply to a pruned student (teacher or random)")
            spec = self.student
            student = pruned_student(teacher, spec.prune, spec.widths, spec.criterion.value,
                                     data if isinstance(data, Task) else None)
            return reinitialise_(student, self.seed) if init == "random" else student
        if isinstance(self.student, str):
            if not self.student.startswith("builtin:"):
                raise SlimError(f"student {self.student!r}: name a zoo model as builtin:NAME")
            if init not in (None, "random", "trained"):
                raise SlimError(f"init: {init} does not apply to a zoo student (random or trained)")
            return zoo_student(self.student, init or "random", self.seed)
        if self.student is not None:
            if init == "trained":
                raise SlimError("init: trained applies to a zoo student (student: builtin:NAME) only")
            return shrink_mlp(teacher, self.student, init=init or "random", seed=self.seed)
        if self.keep is not None or self.every is not None:
            return keep_layers(teacher, self.keep, self.every)
        raise SlimError("distill needs a student: student: [widths] for an MLP, or keep: [layers] / "
                        "every: k for a transformer")

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        student = self.make_student(model, task)
        return distill(model, student, task, self)


def _layer_pairs(student: nn.Module) -> tuple[str, list[tuple[int, int]]] | None:
    """(layer list name, [(student layer, teacher layer)]) for a `keep_layers` student."""
    for edit in reversed(student.__dict__.get("slimkit_edits", [])):
        if edit.get("op") == "keep_layers":
            return edit["module"], list(enumerate(edit["keep"]))
    return None


def _heads(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "num_attention_heads", 1) or 1)


def build_objective(teacher: nn.Module, student: nn.Module, config: DistillConfig) -> Objective:
    weights = Weights(temperature=config.temperature, alpha=config.alpha,
                      hidden=config.hidden_weight, hidden_kind=config.hidden_loss.value,
                      attention=config.attention_weight, heads=_heads(teacher), mixup=config.mixup,
                      bf16=config.bf16, tokens=config.token_weight, cached=config.cache_teacher)
    objective = Objective(teacher, weights)
    named = bool(config.hint_layers)
    if named:
        if not config.hidden_weight:
            raise SlimError("hint_layers: set hidden_weight > 0 to weigh the hints")
        objective.hints = [(n, n) for n in config.hint_layers]  # type: ignore[union-attr]
    pairs = _layer_pairs(student)
    if pairs is not None and (config.hidden_weight or config.attention_weight):
        name, mapping = pairs
        if config.hidden_weight and not named:
            objective.hints = [(f"{name}.{s}", f"{name}.{t}") for s, t in mapping]
        if config.attention_weight:
            objective.attention = [(f"{name}.{s}.attention.self", f"{name}.{t}.attention.self")
                                   for s, t in mapping]
    elif (config.hidden_weight and not named) or config.attention_weight:
        raise SlimError("hidden_weight / attention_weight need a student derived with keep/every "
                        "(or hint_layers: [module names] for hints)")
    if config.cache_teacher and (config.hidden_weight or config.attention_weight):
        raise SlimError("cache_teacher keeps only the teacher's last-layer states: set hidden_weight and "
                        "attention_weight to 0, or cache_teacher: false")
    return objective


def _source(data: object, config: DistillConfig, teacher: nn.Module | None = None) -> Source:
    encode = getattr(data, "encode", None)
    calib = getattr(data, "calib_sentences", None)
    if isinstance(data, Task) and encode is not None and calib is not None:
        return text_task_source(data, config.corpora, config.text, config.batch_size, config.seed,
                                config.augment, teacher if config.cache_teacher else None, config.bf16)
    if config.cache_teacher:
        raise SlimError("cache_teacher: is only used with a text task (e.g. builtin:minilm)")
    if config.corpora or config.augment:
        raise SlimError("corpora: / augment: are only used with a text task (e.g. builtin:minilm)")
    if config.text is not None:
        raise SlimError("text: is only used with a text task (e.g. builtin:minilm)")
    return as_source(data, config.batch_size, config.seed)


def _freeze(student: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    """Turn off gradients of the student's parameters named by `prefixes` (a name or its dotted
    prefix); returns those that were trainable, to turn back on after training."""
    frozen: list[nn.Parameter] = []
    for prefix in prefixes:
        found = [p for n, p in student.named_parameters() if n == prefix or n.startswith(prefix + ".")]
        if not found:
            raise SlimError(f"freeze: the student has no parameter named {prefix!r} or under it")
        frozen += [p for p in found if p.requires_grad and all(p is not q for q in frozen)]
    for param in frozen:
        param.requires_grad_(False)
    return frozen


def _train(teacher: nn.Module, student: nn.Module, data: object, config: DistillConfig, objective: Objective,
           started: float, checkpoint: str | None, on_epoch: Callable[[EpochInfo], None] | None) -> FitResult:
    teacher.eval()
    source = _source(data, config, teacher)
    first_inputs, _ = source.batches(0)[0]
    objective.prepare(student, first_inputs)
    settings = config.settings()
    if settings.time_limit is not None:  # the teacher's pass over the text counts in the time limit
        spent = time.perf_counter() - started
        settings = dataclasses.replace(settings, time_limit=max(1.0, settings.time_limit - spent))
    return fit(student, objective, source.batches, settings, source.validate,
               objective.projections, on_epoch, checkpoint)


def distill(teacher: nn.Module, student: nn.Module, data: object, config: DistillConfig | None = None,
            checkpoint: str | None = None,
            on_epoch: Callable[[EpochInfo], None] | None = None, *, metric: Metric | None = None) -> nn.Module:
    """Train `student` to imitate `teacher` on `data` and return it (best on validation).

    `data`: a Task (labelled digits, or a text task), a DataLoader or any iterable of batches
    (tensors, `(inputs, target)` pairs or dicts of keyword inputs: `slimkit.core.user_task.task_from`,
    which holds a fifth back to choose the best epoch on), a list of sentences or a text file.
    `metric(model) -> float` replaces the task's score. `checkpoint` is a folder to save to and resume
    from; `on_epoch(EpochInfo)` is called after every epoch. Runs under torchrun (DDP) unchanged.
    The student's sizes are compared with the teacher's (`slimkit.core.original`).

    >>> student = distill(teacher, shrink_mlp(teacher, (8, 6)), sk.zoo.entry("lenet-300-100").task())
    >>> student = distill(teacher, my_small_net, loader)
    """
    config = config or DistillConfig()
    if teacher is student:
        raise SlimError("the student must be a different module from the teacher")
    if metric is not None or (not _text(data) and isinstance(data, Iterable | torch.Tensor)):
        data = task_from(data, metric, teacher)   # a DataLoader or batches: a task holding a fifth back
    _same_inputs(teacher, student, data)
    init_distributed()
    remember_original(teacher)
    started = time.perf_counter()
    objective = build_objective(teacher, student, config)
    frozen = _freeze(student, config.freeze)
    try:
        result = _train(teacher, student, data, config, objective, started, checkpoint, on_epoch)
    finally:
        for param in frozen:
            param.requires_grad_(True)
    student.__dict__["slimkit_distill"] = {"best_score": result.best_score,
                                           "best_epoch": result.best_epoch,
                                           "epochs_run": result.epochs_run}
    return carry_original(teacher, student)


def _same_inputs(teacher: nn.Module, student: nn.Module, data: object) -> None:
    """Batches are keyword inputs named after the teacher's forward: the student must take them."""
    if not isinstance(data, Task):
        return
    try:
        names = set(data.example_inputs(1))
    except Exception:   # noqa: BLE001 - a task that cannot say; the first batch will
        return
    takes = input_names(student)
    if names and takes and not names <= set(takes) and not _takes_any(student):
        raise SlimError(f"the student's forward takes ({', '.join(takes)}) but the batches give "
                        f"({', '.join(sorted(names))}), named after the teacher's forward; name the student's "
                        "inputs the same, or pass batches as dicts of keyword inputs both models take")


def _takes_any(model: nn.Module) -> bool:
    """Whether `model.forward` takes any keyword (`**kwargs`), or cannot say."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _text(data: object) -> bool:
    """Sentences (a list of strings) or a text file: the teacher's tokenizer makes the batches."""
    if isinstance(data, str | Path):
        return True
    return isinstance(data, list | tuple) and bool(data) and all(isinstance(s, str) for s in data)


__all__ = ["DistillConfig", "EpochInfo", "FitResult", "FeatureLoss", "PruneCriterion", "PrunedStudent",
           "StudentInit", "distill"]
