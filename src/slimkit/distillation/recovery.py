"""Distillation as a recovery stage: the compressed model trains to imitate the uncompressed one.

In a recipe, `method: recover` after a structural stage (structured pruning, APoZ trimming,
low-rank factorization) fine-tunes the smaller model with the recipe's *input* model as the
teacher — KD on logits (plus the labels, `alpha`), or embedding cosine for encoders, and
optionally hidden-state hints between same-index transformer layers:

```yaml
stages:
  - method: structured
    ratio: 0.5
  - method: recover          # teacher = the model before the first stage
    epochs: 3
    hidden_weight: 1.0
```

Stages that store tensors encoded (sparse, k-means, quantized) come after recovery: training
would undo their encoding, so `recover` refuses such a model with a one-line error.

>>> from slimkit.distillation.recovery import recover
>>> recover(pruned, original, task, RecoveryConfig(epochs=5))
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from pydantic import Field
from torch import nn

from slimkit.core.context import current_original
from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn
from slimkit.core.task import Task
from slimkit.dist.collectives import init as init_distributed
from slimkit.distillation.api import DistillConfig, FeatureLoss, Schedule, _source, build_objective
from slimkit.io.artifact import codec_chains
from slimkit.train.loop import fit


@register_method
class RecoveryConfig(MethodConfig):
    """Fine-tune the compressed model against the uncompressed one (teacher = the recipe's input)."""

    method: ClassVar[str] = "recover"
    family: ClassVar[Family] = Family.DISTILL
    summary: ClassVar[str] = "recovery distillation: the compressed model imitates the original"
    needs_original: ClassVar[bool] = True

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term")
    hidden_weight: float = Field(0.0, ge=0, description="hints between same-index transformer layers")
    hidden_loss: FeatureLoss = FeatureLoss.COSINE
    text: str | None = Field(None, description="extra training text file, one sentence per line")
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Schedule = Schedule.COSINE
    warmup: float = Field(0.0, ge=0, lt=1)
    patience: int | None = Field(None, ge=1)
    seed: int = 0
    progress: bool = False
    time_limit: float | None = Field(None, gt=0, description="seconds; no epoch starts after it")

    @classmethod
    def example(cls) -> RecoveryConfig:
        return cls(epochs=2)

    def distill_config(self) -> DistillConfig:
        """The equivalent `DistillConfig` (same loss weights and loop settings, no student)."""
        shared = set(DistillConfig.model_fields) & set(type(self).model_fields) - {"targets", "ignore"}
        return DistillConfig(**{k: getattr(self, k) for k in shared})

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        teacher = current_original()
        if teacher is None:
            raise SlimError("recover: needs the uncompressed model as teacher; use it as a recipe stage "
                            "or call slimkit.distillation.recovery.recover(model, original, data, config)")
        return recover(model, teacher, task, self)


def _encoded(model: nn.Module) -> list[str]:

    names = [k for k, chain in codec_chains(model).items() if chain]
    names += [n for n, m in model.named_modules() if type(m).__module__.startswith("slimkit.nn.")]
    return names


def _layer_lists(student: nn.Module, teacher: nn.Module) -> list[tuple[str, str]]:
    """Hint pairs: every layer of each ModuleList the two models share by name and length."""
    teacher_lists = {n: m for n, m in teacher.named_modules() if isinstance(m, nn.ModuleList)}
    pairs: list[tuple[str, str]] = []
    for name, mod in student.named_modules():
        other = teacher_lists.get(name)
        if isinstance(mod, nn.ModuleList) and other is not None and len(other) == len(mod) > 1:
            pairs += [(f"{name}.{i}", f"{name}.{i}") for i in range(len(mod))]
    return pairs


def recover(model: nn.Module, teacher: nn.Module, data: object, config: RecoveryConfig | None = None) -> nn.Module:
    """Train `model` (already compressed structurally) to imitate `teacher`; returns it.

    >>> recover(pruned, original, task, RecoveryConfig(epochs=5))
    """
    config = config or RecoveryConfig()
    if model is teacher:
        raise SlimError("recover: the teacher must be the uncompressed copy, not the model itself")
    encoded = _encoded(model)
    if encoded:
        raise SlimError(f"recover: {encoded[0]} is stored encoded (sparse, shared or quantized) and training "
                        "would undo it; put the recover stage before such stages")
    dconfig = config.distill_config()
    init_distributed()
    source = _source(data, dconfig)
    objective = build_objective(teacher, model, dconfig.model_copy(update={"hidden_weight": 0.0}))
    if config.hidden_weight:
        objective.hints = _layer_lists(model, teacher)
        if not objective.hints:
            raise SlimError("recover: hidden_weight needs layer lists (e.g. transformer blocks) shared by "
                            "the model and its original")
        objective.weights = replace(objective.weights, hidden=config.hidden_weight,
                                    hidden_kind=config.hidden_loss.value)
    teacher.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    first_inputs, _ = source.batches(0)[0]
    objective.prepare(model, first_inputs)
    result = fit(model, objective, source.batches, dconfig.settings(), source.validate, objective.projections)
    model.__dict__["slimkit_recover"] = {"best_score": result.best_score, "best_epoch": result.best_epoch,
                                         "epochs_run": result.epochs_run}
    return model
