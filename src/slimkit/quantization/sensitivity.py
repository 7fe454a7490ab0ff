"""Sensitivity table: how much the score moves when only one layer is quantized.

Use it to pick mixed precision: keep the most sensitive layers at more bits (a second recipe
stage with `targets` naming them).

>>> rows = sensitivity(model, WeightOnlyConfig(bits=3, granularity="channel"), task)
>>> rows[0]                        # most sensitive first
{'module': 'fc3', 'score': 0.9541, 'delta': -0.0236}
"""

from __future__ import annotations

import copy

from torch import nn

from slimkit.core.methods import MethodConfig, apply_
from slimkit.core.select import FilterFn
from slimkit.core.task import Task
from slimkit.quantization.convert import select_targets


def _score(task: Task, model: nn.Module) -> float:
    validation = getattr(task, "validation_score", None)    # choose operating points off the test split
    return float(validation(model) if callable(validation) else task.score(model))


def sensitivity(model: nn.Module, config: MethodConfig, task: Task,
                filter_fn: FilterFn | None = None) -> list[dict]:
    """One row per layer the config would quantize: the score with only that layer quantized and
    its change from the float model, most harmful first. `model` is not modified."""
    base = _score(task, model)
    picked, _ = select_targets(model, config.targets, config.ignore, filter_fn,
                               (nn.Linear, nn.Embedding, nn.Conv2d))
    rows = []
    for name, _module in picked:
        trial = copy.deepcopy(model)
        trial.__dict__.pop("slimkit_edits", None)
        trial.__dict__.pop("slimkit_quant", None)
        try:
            apply_(trial, config.model_copy(update={"targets": [name], "ignore": []}), task)
        except ValueError as exc:   # an option this one layer cannot take
            rows.append({"module": name, "score": None, "delta": None, "error": str(exc)})
            continue
        score = _score(task, trial)
        rows.append({"module": name, "score": round(score, 6), "delta": round(score - base, 6)})
    return sorted(rows, key=lambda r: (r["delta"] is None, r["delta"] if r["delta"] is not None else 0))
