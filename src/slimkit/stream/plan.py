"""Which recipes can run on a bare checkpoint, and what each tensor gets.

Each stage folds itself into a `StreamPlan` through its method's `tensors` hook
(`slimkit.core.streaming`, registered by the method's package): affine codes, a per-tensor codebook,
a sparse mask (per tensor, N:M, or one exact global threshold: `slimkit.stream.global_cut`), or a
sparse mask whose kept values go through a codebook, as Deep Compression stores them. A stage whose
method has no such hook (it needs calibration or training data, or an architecture), or whose
config needs them (fine-tuning), is refused with one line naming the stage.

>>> plan = plan_from_recipe(load_recipe("int8"))
>>> plan.quant.bits, plan.quant.group_size
(8, None)
"""

from __future__ import annotations

import dataclasses

from slimkit.core.errors import SlimError
from slimkit.core.streaming import STREAMING, KMeansSpec, QuantSpec, StreamPlan, StreamRefused, stream_support

__all__ = ["KMeansSpec", "QuantSpec", "StreamPlan", "plan_from_recipe", "weight_only"]   # the specs live in core


def weight_only() -> str:
    """The methods a bare checkpoint can take, with their conditions: "int8, kmeans (finetune_epochs: 0), ..."."""
    return ", ".join(m + (f" ({s.tensors_when})" if s.tensors_when else "") for m, s in STREAMING.items() if s.tensors)


def _refuse(where: str, i: int, method: str, why: str) -> SlimError:
    return SlimError(f"{where}: stage {i + 1} ({method}) {why}; a bare checkpoint can only take "
                     f"weight-only stages: {weight_only()}")


def plan_from_recipe(recipe) -> StreamPlan:
    """The streaming plan of a `slimkit.pipeline.recipes.Recipe`, or a one-line SlimError naming the first
    stage that cannot run without data or an architecture."""
    where = f"recipe {recipe.name}"
    plan = StreamPlan(name=recipe.name)
    selectors = None
    for i, cfg in enumerate(recipe.stages):
        support = stream_support(cfg.method)
        if support.tensors is None:
            raise _refuse(where, i, cfg.method, f"needs {support.needs}" if support.needs
                          else "is not a streaming method")
        try:
            plan = support.tensors(cfg, plan)
        except StreamRefused as exc:
            raise _refuse(where, i, cfg.method, str(exc)) from None
        selectors = _selectors(cfg, selectors, where, i)
    if plan.pruned and (plan.quant is not None or plan.embedding_quant is not None):
        raise SlimError(f"{where}: quantization after magnitude pruning is not supported on a bare "
                        "checkpoint (use kmeans after magnitude, as Deep Compression does)")
    if selectors is not None:
        plan = dataclasses.replace(plan, targets=selectors[0], ignore=selectors[1])
    return plan


def _selectors(cfg, first: tuple | None, where: str, i: int) -> tuple[list[str], list[str]]:
    """Every stage must select the same tensors (a tensor gets one chain of encoders)."""
    targets = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets or [])
    mine = (targets, list(cfg.ignore))
    if first is not None and mine != first:
        raise SlimError(f"{where}: stage {i + 1} ({cfg.method}): different targets/ignore per stage are "
                        "not supported on a bare checkpoint")
    return mine
