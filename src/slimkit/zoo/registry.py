"""Named embedded models. Each entry builds its architecture, loads trained weights, has a task.

`tag` / `base_of` (re-exported here) live in `slimkit.core.provenance`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.provenance import base_of, tag
from slimkit.core.task import Task
from slimkit.zoo.cache import load_cached, save_cached
from slimkit.zoo.digits import load_digits
from slimkit.zoo.train import fit


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[], nn.Module]          # architecture only (random weights), cheap
    load: Callable[[], nn.Module]           # trained / pretrained weights
    task: Callable[[], Task]
    aliases: tuple[str, ...] = field(default=())
    train_settings: dict = field(default_factory=dict)  # `zoo.train.fit` options (digits models)


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    for key in (entry.name, *entry.aliases):
        ZOO[key] = entry
    return entry


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise SlimError(f"unknown builtin model {name!r} (known: {', '.join(names())})")
    return ZOO[name]


def names() -> list[str]:
    return sorted({e.name for e in ZOO.values()})


def trained_digits_model(name: str, make: Callable[[], nn.Module], **fit_kwargs) -> nn.Module:
    """Load `name` from the cache, or train it deterministically and cache it."""

    model = make()
    state = load_cached(name)
    if state is not None:
        try:
            model.load_state_dict(state)
            return model.eval()
        except RuntimeError:
            pass  # architecture changed since the cache was written: retrain
    torch.manual_seed(0)
    model = make()
    fit(model, load_digits(), seed=0, **fit_kwargs)
    save_cached(name, model.state_dict())
    return model.eval()


__all__ = ["ZOO", "ZooEntry", "base_of", "entry", "names", "register", "tag", "trained_digits_model"]
