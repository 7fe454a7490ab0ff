"""A candidate's stages run under the search's clock, through the one recipe loop (`run_recipe`).

>>> net = run_stages(model, stages, task, deadline=time.monotonic() + 60)   # OutOfTime if it passes
>>> again = reseeded(stages, offset=2)          # the same recipe with other training seeds
"""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import nn

from slimkit.autosearch.guide import fresh_copy
from slimkit.core.methods import MethodConfig
from slimkit.core.task import Task
from slimkit.pipeline.recipes import Recipe, run_recipe


class OutOfTime(Exception):
    """The search's time budget ran out in the middle of a candidate."""


def within(config: MethodConfig, left: float) -> MethodConfig:
    """`config` with its time limit (if it has one) cut to the `left` seconds of the search."""
    if "time_limit" not in type(config).model_fields:
        return config
    own = config.time_limit
    return config.model_copy(update={"time_limit": max(1.0, left if own is None else min(own, left))})


def reseeded(stages: list[MethodConfig], offset: int = 1) -> list[MethodConfig] | None:
    """The stages with every training seed moved by `offset`; None if no stage has a seed (the
    recipe is deterministic: a second run would give the same artifact)."""
    out, any_seed = [], False
    for config in stages:
        if "seed" in type(config).model_fields:
            config, any_seed = config.model_copy(update={"seed": config.seed + offset}), True
        out.append(config)
    return out if any_seed else None


def run_stages(model: nn.Module, stages: list[MethodConfig], task: Task | None, deadline: float,
               cut: bool = True, on_stage: Callable[[int, MethodConfig, nn.Module], None] | None = None
               ) -> nn.Module:
    """`stages` applied to a fresh copy of `model` (`recover` stages distil from `model` itself).

    Raises `OutOfTime` if `deadline` (`time.monotonic()`) passes before a stage starts; with `cut`,
    each stage's time limit is cut to the time left. `on_stage` is `run_recipe`'s (it may raise to
    stop the candidate)."""

    def on_the_clock(i: int, config: MethodConfig) -> MethodConfig:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OutOfTime(f"out of time before stage {i + 1} ({config.method})")
        return within(config, left) if cut else config

    recipe = Recipe("search candidate", "", list(stages))
    return run_recipe(fresh_copy(model), recipe, task, on_stage=on_stage, before_stage=on_the_clock)
