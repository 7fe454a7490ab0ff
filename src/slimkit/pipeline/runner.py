"""Run a recipe stage by stage, measuring and saving after every stage.

A failing or interrupted run still leaves every finished stage's artifact and measurements in
the folder, so the best result so far is never lost.

>>> stages = run_pipeline(model, sk.load_recipe("deep-compression"), task, "runs/dc")
>>> [(s.method, s.bytes, s.score) for s in stages]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from slimkit.core.methods import apply_
from slimkit.core.context import original_model
from slimkit.core.task import Task
from slimkit.pipeline.recipes import Recipe, keep_original


@dataclass
class StageResult:
    index: int
    method: str
    path: str | None
    bytes: int | None
    score: float | None
    latency_ms: dict
    error: str | None = None


def run_pipeline(model: nn.Module, recipe: Recipe, task: Task | None, folder: str | Path,
                 timing: bool = True) -> tuple[nn.Module, list[StageResult]]:
    """Apply `recipe` to `model`; after each stage save `NN-method.slim` in `folder`, measure it,
    and rewrite `folder/stages.json`. On an exception the stage is recorded as failed and the
    exception re-raised, with every earlier artifact kept."""
    from slimkit.eval.measure import evaluate
    from slimkit.io.artifact import save
    from slimkit.io.safetensors_file import atomic_write

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []

    def record() -> None:
        atomic_write(out / "stages.json", [json.dumps([asdict(r) for r in results], indent=1).encode()])

    with original_model(keep_original(model, recipe)):
        for i, config in enumerate(recipe.stages, start=1):
            try:
                model = apply_(model, config, task)
            except BaseException as exc:
                results.append(StageResult(i, config.method, None, None, None, {}, f"{type(exc).__name__}: {exc}"))
                record()
                raise
            path = out / f"{i:02d}-{config.method}.slim"
            save(model, path, info={"recipe": recipe.name, "stage": i})
            m = evaluate(model, task, path=path, timing=timing)
            results.append(StageResult(i, config.method, str(path), m.bytes, m.score, m.latency_ms))
            record()
    return model, results
