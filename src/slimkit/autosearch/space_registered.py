"""The search space made of the registered methods' own entries.

Every method may offer an entry (`MethodConfig.search_choices`, in the method's own package); this
space draws, for each family in the order families compose (distillation, pruning, sharing,
quantization), one of that family's offering methods or none, and lets the chosen method draw its
own options. It is the space of models without a curated one, and of any search restricted to named
methods (`search(..., methods=["kmeans", "magnitude"])`, `slimkit search --method kmeans`).

>>> space = RegisteredSpace(model, task, ["magnitude", "kmeans"])
>>> space.suggest(study.ask())       # e.g. [MagnitudePruning(sparsity=0.81), KMeansConfig(bits=5)]
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.autosearch.space import Space
from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, methods
from slimkit.core.task import Task

ORDER = (Family.DISTILL, Family.PRUNE, Family.SHARE, Family.QUANTIZE)
NONE = "none"


def offers_search(cls: type[MethodConfig]) -> bool:
    """Whether a method class defines its own search entry."""
    return cls.search_choices.__func__ is not MethodConfig.search_choices.__func__


def searchable(names: list[str] | None = None) -> dict[str, type[MethodConfig]]:
    """Registered methods with a search entry, by name; `names` restricts them (each must offer one)."""
    known = methods()
    offering = {name: cls for name, cls in known.items() if offers_search(cls)}
    if names is None:
        return offering
    for name in names:
        if name not in known:
            raise SlimError(f"search: unknown method {name!r} (known: {', '.join(known)})")
        if name not in offering:
            raise SlimError(f"search: method {name!r} has no search entry (searchable: {', '.join(offering)})")
    return {name: offering[name] for name in names}


class RegisteredSpace(Space):
    """One optional stage per family, drawn from the methods' own search entries."""

    name = "registered"

    def __init__(self, model: nn.Module, task: Task | None, names: list[str] | None = None):
        self.model, self.task = model, task
        chosen = searchable(names)
        if not chosen:
            raise SlimError("search: no registered method offers a search entry")
        self.by_family = {f: sorted(n for n, c in chosen.items() if c.family == f) for f in ORDER}
        self.classes = chosen
        self.required = names is not None and len(names) == 1   # one named method: always use it

    def suggest(self, trial: Any) -> list[MethodConfig]:
        stages: list[MethodConfig] = []
        for family in ORDER:
            options = self.by_family[family]
            if not options:
                continue
            choices = options if self.required else [NONE, *options]
            pick = choices[0] if len(choices) == 1 else trial.suggest_categorical(family.value, choices)
            if pick == NONE:
                continue
            config = self.classes[pick].search_choices(trial, self.model, self.task)
            if config is not None:
                stages.append(config)
        return stages
