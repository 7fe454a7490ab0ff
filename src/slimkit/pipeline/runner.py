"""Run a recipe stage by stage (`slimkit.pipeline.recipes.run_recipe`), measuring and saving after every stage.

A failing or interrupted run still leaves every finished stage's artifact and measurements in
the folder, so the best result so far is never lost.

>>> model, stages = run_pipeline(model, sk.load_recipe("deep-compression"), task, "runs/dc")
>>> [(s.method, s.bytes, s.score) for s in stages]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from slimkit.core.methods import MethodConfig
from slimkit.core.task import Task
from slimkit.eval.measure import evaluate
from slimkit.io.artifact import save
from slimkit.io.safetensors_file import atomic_write
from slimkit.pipeline.recipes import Recipe, run_recipe


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
    """Apply `recipe` to `model` (with `run_recipe`); after each stage save `NN-method.slim` in
    `folder`, measure it, and rewrite `folder/stages.json`. On an exception in a stage the stage is
    recorded as failed and the exception re-raised, with every earlier artifact kept."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    running: list[MethodConfig] = []   # the stage being applied, while it is

    def record() -> None:
        atomic_write(out / "stages.json", [json.dumps([asdict(r) for r in results], indent=1).encode()])

    def before_stage(_i: int, config: MethodConfig) -> MethodConfig:
        running[:] = [config]
        return config

    def on_stage(i: int, config: MethodConfig, net: nn.Module) -> None:
        running.clear()
        path = out / f"{i + 1:02d}-{config.method}.slim"
        save(net, path, info={"recipe": recipe.name, "stage": i + 1})
        m = evaluate(net, task, path=path, timing=timing)
        results.append(StageResult(i + 1, config.method, str(path), m.bytes, m.score, m.latency_ms))
        record()

    try:
        model = run_recipe(model, recipe, task, on_stage=on_stage, before_stage=before_stage)
    except BaseException as exc:
        if running:   # the stage itself failed (not saving or measuring a finished one)
            results.append(StageResult(len(results) + 1, running[0].method, None, None, None, {},
                                       f"{type(exc).__name__}: {exc}"))
            record()
        raise
    return model, results
