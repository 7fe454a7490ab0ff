"""A candidate's stages run under the search's clock, through the one recipe loop (`run_recipe`).

>>> net = run_stages(model, stages, task, deadline=time.monotonic() + 60)   # OutOfTime if it passes
>>> again = reseeded(stages, offset=2)          # the same recipe with other training seeds

A stage is a training loop the search cannot look into, so a stage that started in time could
still run past the budget: `hard_deadline` stops it there with `OutOfTime` (a `SIGALRM` timer,
armed only around work on a fresh copy of the model, in the main thread, and only when nothing else
uses that signal; elsewhere the budget is checked between stages).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from slimkit.autosearch.guide import fresh_copy
from slimkit.core.methods import MethodConfig
from slimkit.core.task import Task
from slimkit.pipeline.recipes import Recipe, run_recipe


class OutOfTime(Exception):
    """The search's time budget ran out in the middle of a candidate."""


def _alarm(signum, frame) -> None:
    raise OutOfTime("the time budget ran out in the middle of a stage")


@contextmanager
def hard_deadline(deadline: float | None) -> Iterator[None]:
    """Raise `OutOfTime` inside the block once `time.monotonic()` passes `deadline` (None: no limit).

    Only in the main thread, where `signal.setitimer` exists and no other handler owns `SIGALRM`;
    otherwise the block runs unlimited. The timer and the handler are restored on the way out."""
    usable = (deadline is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None))
    if not usable:
        yield
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise OutOfTime("the time budget ran out before a stage")
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, left, 0.5)   # again every 0.5 s: a broad `except` may swallow one
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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

    Raises `OutOfTime` once `deadline` (`time.monotonic()`) passes, before or during a stage (see
    `hard_deadline`); with `cut`, each stage's time limit is cut to the time left. `on_stage` is
    `run_recipe`'s (it may raise to stop the candidate)."""

    def on_the_clock(i: int, config: MethodConfig) -> MethodConfig:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OutOfTime(f"out of time before stage {i + 1} ({config.method})")
        return within(config, left) if cut else config

    recipe = Recipe("search candidate", "", list(stages))
    with hard_deadline(deadline):
        return run_recipe(fresh_copy(model), recipe, task, on_stage=on_stage, before_stage=on_the_clock)
