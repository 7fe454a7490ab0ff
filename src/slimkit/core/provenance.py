"""Where a model came from, and the task that scores it.

A model loaded by slimkit carries its origin (`{"kind": "zoo", "name": ...}`, `{"kind": "hf", ...}`,
`{"kind": "weights", ...}`; a user's own module is `{"kind": "user"}`), so that a saved .slim file can
rebuild its architecture and a report can find the right task. The layers that know models (the zoo,
Hugging Face folders) register a *task finder*; code below them asks `task_for(model)`.

>>> tag(model, {"kind": "zoo", "name": "lenet-300-100"})
>>> base_of(model)["name"]
'lenet-300-100'
>>> task_for(model)            # the DigitsTask, found by the zoo's finder
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimkit.core.task import Task

TaskFinder = Callable[[nn.Module, dict], "Task | None"]
_FINDERS: list[TaskFinder] = []


def tag(model: nn.Module, base: dict) -> nn.Module:
    """Remember where a model came from, so a saved .slim can rebuild its architecture."""
    model.__dict__["slimkit_base"] = base
    return model


def base_of(model: nn.Module) -> dict:
    """The origin recorded by `tag` (`{"kind": "user"}` for a module slimkit did not load)."""
    return model.__dict__.get("slimkit_base", {"kind": "user"})


def register_task_finder(finder: TaskFinder) -> TaskFinder:
    """Register `finder(model, base) -> Task | None`; finders are asked in registration order."""
    if finder not in _FINDERS:
        _FINDERS.append(finder)
    return finder


def task_for(model: nn.Module) -> Task | None:
    """The task that scores `model`, from where it came from (None for user models)."""
    base = base_of(model)
    for finder in _FINDERS:
        task = finder(model, base)
        if task is not None:
            return task
    return None
