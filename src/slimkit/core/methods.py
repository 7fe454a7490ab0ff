"""One verb per family, one config type per method, a registry from config type to handler.

>>> import slimkit as sk
>>> sk.quantize_(model, sk.make_config("int8"), data=task)    # in place
>>> sk.apply_(model, config)                                  # any family

A method is one config class that registers itself; everything slimkit knows about it hangs off
that class, so adding a method touches no other file::

    @register_method
    class MagnitudePruningConfig(MethodConfig):
        method: ClassVar[str] = "magnitude"
        family: ClassVar[Family] = Family.PRUNE
        sparsity: float = 0.9

        def apply(self, model, task, filter_fn): ...             # the work
        @classmethod
        def search_choices(cls, trial, model, task): ...         # its entry in `slimkit search`

Its size estimate (for `slimkit inspect`) registers with `slimkit.io.sizing.estimates`, its streaming
support (checkpoints larger than memory) with `slimkit.core.streaming.register_streaming`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.provenance import task_for
from slimkit.core.select import FilterFn
from slimkit.core.task import Task


class Family(str, Enum):
    QUANTIZE = "quantization"
    PRUNE = "pruning"
    SHARE = "sharing"
    DISTILL = "distillation"


class MethodConfig(BaseModel):
    """Base of every method's config: typed, frozen, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: ClassVar[str]
    family: ClassVar[Family]
    summary: ClassVar[str] = ""
    targets: str | list[str] | None = None
    ignore: list[str] = []

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        """Compress `model` in place (or return a new module) and return it."""
        raise NotImplementedError

    @classmethod
    def example(cls) -> MethodConfig:
        """A quick configuration for lenet-300-100, used by the conformance suite."""
        return cls()

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> MethodConfig | None:
        """This method's entry in an accuracy-budgeted search: a config whose options are drawn from
        `trial` (an optuna trial, define-by-run: `trial.suggest_float("magnitude.sparsity", 0.5, 0.95)`),
        or None when the method has nothing to offer `model`. Name parameters "<method>.<option>".
        The default offers nothing."""
        return None


METHODS: dict[str, type[MethodConfig]] = {}


def register_method(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: make a config usable by name in recipes and by `apply_`."""
    if cls.method in METHODS and METHODS[cls.method] is not cls:
        raise ValueError(f"method {cls.method!r} registered twice")
    METHODS[cls.method] = cls
    return cls


def methods(family: Family | None = None) -> dict[str, type[MethodConfig]]:
    """Registered methods by name, optionally of one family."""
    return {k: v for k, v in sorted(METHODS.items()) if family is None or v.family == family}


def make_config(method: str, **options: Any) -> MethodConfig:
    """Build a config by method name: `make_config("magnitude", sparsity=0.9)`."""
    known = methods()
    if method not in known:
        raise SlimError(f"unknown method {method!r} (known: {', '.join(known) or 'none yet'})")
    return known[method](**options)


def apply_(model: nn.Module, config: MethodConfig, data: Task | None = None,
           filter_fn: FilterFn | None = None) -> nn.Module:
    """Apply any method config to `model` in place; returns the model (possibly a new root)."""
    if not isinstance(config, MethodConfig):
        raise TypeError(f"expected a slimkit method config, got {type(config).__name__}")
    if data is None:
        data = task_for(model)
    return config.apply(model, data, filter_fn)


def _family_verb(family: Family):
    def verb(model: nn.Module, config: MethodConfig, data: Task | None = None,
             filter_fn: FilterFn | None = None) -> nn.Module:
        if getattr(config, "family", None) != family:
            raise TypeError(f"{type(config).__name__} is not a {family.value} method")
        return apply_(model, config, data, filter_fn)

    verb.__doc__ = f"Apply a {family.value} config in place (see `apply_`)."
    return verb


quantize_ = _family_verb(Family.QUANTIZE)
prune_ = _family_verb(Family.PRUNE)
share_ = _family_verb(Family.SHARE)
