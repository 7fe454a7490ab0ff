"""One verb per family, one config type per method, a registry from config type to handler.

>>> import slimkit as sk
>>> sk.quantize_(model, sk.make_config("int8"), data=task)    # in place
>>> sk.apply_(model, config)                                  # any family
>>> sk.prune_(model, config, data=loader, metric=my_accuracy)  # your DataLoader and metric

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

import logging
import types
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.original import carry_original, remember_original
from slimkit.core.provenance import task_for
from slimkit.core.select import FilterFn, select_modules
from slimkit.core.task import Task
from slimkit.core.text import clean
from slimkit.core.torch_utils import first_nonfinite
from slimkit.core.user_task import Metric, task_from


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
    # Module types whose weights this method encodes (codes, codebooks): `apply_` refuses to run it
    # on a selected one holding NaN/Inf unless the config's `allow_nonfinite` is true. Empty: no check.
    encodes: ClassVar[tuple[type[nn.Module], ...]] = ()
    targets: str | list[str] | None = None
    ignore: list[str] = []

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        """No silent coercion from a recipe: `bits: true` or `bits: 4.0` where an int belongs, a
        number or a string where a bool belongs, `lr: true` where a float belongs are refused
        (pydantic's lax mode would take them as 1, 4, ...). Enums still take their string values."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        value = check_scalar(value, scalar_kinds(field.annotation))
        if info.field_name == "seed" and isinstance(value, int) and not 0 <= value < 2**63:
            raise ValueError("seed must be an integer from 0 to 2**63 - 1")   # torch's generators take no more
        if not _fits_int64(value):  # torch takes no larger int (batch_size: 10**20 failed in a DataLoader)
            raise ValueError("integers must lie between -2**63 and 2**63 - 1")
        return value

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


def scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types among `annotation`'s (`int | None` -> {int}, `str | list[str]` -> {str})."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return scalar_kinds(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(scalar_kinds(a) for a in get_args(annotation)))
    return {annotation} & {bool, int, float, str} if isinstance(annotation, type) else set()


def check_scalar(value: Any, kinds: set[type]) -> Any:
    """`value` if it has one of `kinds` without a lossy coercion; else a ValueError to act on."""
    if not kinds or type(value) in kinds:
        return value
    if isinstance(value, str) and kinds & {int, float}:
        want = "an integer" if float not in kinds else "a number"
        raise ValueError(f"must be {want}, got the string {value!r}"[:200])
    if isinstance(value, bool):
        if bool not in kinds:
            want = "an integer" if int in kinds else "a number"
            raise ValueError(f"must be {want}, got the bool {value}")
    elif isinstance(value, float):
        if float not in kinds and int in kinds:
            raise ValueError(f"must be an integer, got {value!r}")
    elif isinstance(value, int | str) and bool in kinds and not kinds & {int, float, str}:
        raise ValueError(f"must be true or false, got {value!r}"[:200])
    return value


METHODS: dict[str, type[MethodConfig]] = {}
log = logging.getLogger("slimkit")


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


_PREPARERS: list[Callable[[nn.Module], object]] = []


def register_preparer(step: Callable[[nn.Module], object]) -> Callable[[nn.Module], object]:
    """Run `step(model)` before any method applies to a model: a layer that knows a model family makes
    it ready in place, recording its edits (the zoo turns a user's `transformers` Conv1D layers into
    `nn.Linear` and a tied LM head into one that reads the embedding, so every method applies)."""
    if step not in _PREPARERS:
        _PREPARERS.append(step)
    return step


def apply_(model: nn.Module, config: MethodConfig, data: object = None,
           filter_fn: FilterFn | None = None, metric: Metric | None = None) -> nn.Module:
    """Apply any method config to `model` in place; returns the model (possibly a new root).

    `data` is a `Task`, a DataLoader or an iterable of batches, `metric` a callable
    `metric(model) -> float` (`slimkit.core.user_task.task_from`); without them, the task of a
    builtin or Hugging Face model. The model's fp32 size is remembered first: ratios are taken
    against the original (`slimkit.core.original`).

    >>> sk.apply_(model, sk.make_config("int8"), data=loader)
    """
    if not isinstance(config, MethodConfig):
        raise TypeError(f"expected a slimkit method config, got {type(config).__name__}")
    for step in _PREPARERS:
        step(model)
    config = finite_only(model, config, filter_fn)
    task = task_from(data, metric, model)
    if task is None:
        task = task_for(model)
    remember_original(model)
    return carry_original(model, config.apply(model, task, filter_fn))


def finite_only(model: nn.Module, config: MethodConfig, filter_fn: FilterFn | None = None) -> MethodConfig:
    """`config`, checked against NaN/Inf in the weights it would encode (`config.encodes`).

    A scale or a centroid computed from a non-finite weight makes a whole row (or layer) NaN in the
    artifact, so by default the first such tensor is refused in one line (`SlimError`, exit 2 from
    the CLI) naming it. With `allow_nonfinite: true` the layers holding NaN/Inf are added to the
    config's `ignore` instead: they stay float, as they are, and a warning names them.
    """
    if not config.encodes:
        return config
    chosen = select_modules(model, config.targets, (nn.Module,), filter_fn, config.ignore)
    bad = []
    for name, module in chosen:
        if not isinstance(module, config.encodes):
            continue
        found = first_nonfinite((f"{name}.{p}", t) for p, t in module.named_parameters(recurse=False))
        if found is None:
            continue
        if not getattr(config, "allow_nonfinite", False):
            tensor, count, total = found
            raise SlimError(f"{config.method}: {clean(tensor)} has {count:,} non-finite (NaN/Inf) value(s) of "
                            f"{total:,}; fix the weights, leave the layer out with `ignore`, or set "
                            "allow_nonfinite: true to keep such layers float")
        bad.append(name)
    if not bad:
        return config
    log.warning("%s: %d layer(s) with NaN/Inf weights stay float (allow_nonfinite): %s", config.method, len(bad),
                ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else ""))
    return config.model_copy(update={"ignore": [*config.ignore, *bad]})


def _family_verb(family: Family):
    def verb(model: nn.Module, config: MethodConfig, data: object = None,
             filter_fn: FilterFn | None = None, metric: Metric | None = None) -> nn.Module:
        if getattr(config, "family", None) != family:
            raise TypeError(f"{type(config).__name__} is not a {family.value} method")
        return apply_(model, config, data, filter_fn, metric)

    verb.__doc__ = f"Apply a {family.value} config in place (see `apply_`)."
    return verb


quantize_ = _family_verb(Family.QUANTIZE)
prune_ = _family_verb(Family.PRUNE)
share_ = _family_verb(Family.SHARE)


def _fits_int64(value: Any, depth: int = 0) -> bool:
    """Whether every int in `value` (and in the lists and dicts it holds) fits a signed 64-bit int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    if depth < 8 and isinstance(value, BaseModel):   # a nested spec another validator built first
        return all(_fits_int64(v, depth + 1) for v in vars(value).values())
    if depth < 8 and isinstance(value, dict):
        return all(_fits_int64(v, depth + 1) for v in value.values())
    if depth < 8 and isinstance(value, (list, tuple)):
        return all(_fits_int64(v, depth + 1) for v in value)
    return True
