"""Batches in the form users have them, read for `slimkit.core.user_task.task_from`: a DataLoader or
any iterable of tensors, `(inputs, target)` pairs or dicts of keyword inputs, as (keyword inputs,
target or None) pairs named after the model's forward; and the tensor in a model's output."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch

Pair = tuple[Batch, torch.Tensor | None]
MAX_SAMPLES = 200_000     # a DataLoader is read up to this many samples (the rest is left unread)
log = logging.getLogger("slimkit")


def input_names(model: nn.Module) -> list[str]:
    """The names of `model.forward`'s parameters that a batch may fill by keyword, in order."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def read_batches(data: object, model: nn.Module) -> list[Pair]:
    """`data` as a list of (keyword inputs, target or None), read up to MAX_SAMPLES samples."""
    if isinstance(data, torch.Tensor | dict) or (isinstance(data, tuple) and _one_pair(data)):
        data = [data]
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise SlimError(f"data= must be a Task, a DataLoader or an iterable of batches, got a {type(data).__name__}")
    names = input_names(model)
    pairs: list[Pair] = []
    seen = 0
    for i, item in enumerate(data):
        inputs, target = _parts(item, i)
        pair = (_keywords(inputs, names, i), _target(target, i))
        pairs.append(pair)
        seen += rows_of(pair) or 1
        if seen >= MAX_SAMPLES:
            log.warning("data: read the first %d samples (%d batches); the rest is not used", seen, len(pairs))
            break
    if not pairs:
        raise SlimError("data= gave no batches")
    return pairs


def _one_pair(data: tuple) -> bool:
    """`(inputs, target)` of tensors with one leading size: one batch, not two."""
    if len(data) != 2 or not all(isinstance(t, torch.Tensor) and t.dim() for t in data):
        return False
    return data[0].shape[0] == data[1].shape[0]


def _parts(item: object, i: int) -> tuple[object, object]:
    if isinstance(item, torch.Tensor | dict):
        return item, None
    if isinstance(item, tuple | list):
        if len(item) == 1:
            return item[0], None
        if len(item) == 2:
            return item[0], item[1]
        raise SlimError(f"data: batch #{i} has {len(item)} items; expected a tensor, a dict of keyword inputs "
                        "or an (inputs, target) pair")
    raise SlimError(f"data: batch #{i} is a {type(item).__name__}; expected a tensor, a dict of keyword inputs "
                    "or an (inputs, target) pair")


def _keywords(inputs: object, names: list[str], i: int) -> Batch:
    if isinstance(inputs, dict):
        bad = next((k for k in inputs if not isinstance(k, str)), None)
        if bad is not None:
            raise SlimError(f"data: batch #{i}: input names must be strings, got {bad!r}")
        return dict(inputs)
    tensors = list(inputs) if isinstance(inputs, tuple | list) else [inputs]
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        kinds = ", ".join(sorted({type(t).__name__ for t in tensors}))
        raise SlimError(f"data: batch #{i}: inputs must be tensors (or a dict of them), got {kinds}")
    if len(tensors) > len(names):
        raise SlimError(f"data: batch #{i} has {len(tensors)} input tensor(s) but the model's forward names "
                        f"{len(names)} parameter(s) ({', '.join(names) or 'none'}); give batches as dicts of "
                        "keyword inputs")
    return dict(zip(names, tensors, strict=False))


def _target(target: object, i: int) -> torch.Tensor | None:
    if target is None or isinstance(target, torch.Tensor):
        return target
    try:
        return torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        raise SlimError(f"data: batch #{i}: the target is a {type(target).__name__}, not a tensor") from None


def rows_of(pair: Pair) -> int | None:
    """The batch's leading size, when every tensor in it (target included) has the same one."""
    inputs, target = pair
    tensors = [t for t in inputs.values() if isinstance(t, torch.Tensor)] + ([target] if target is not None else [])
    sizes = {t.shape[0] if t.dim() else None for t in tensors}
    return sizes.pop() if len(sizes) == 1 and tensors else None


def output_tensor(out: Any) -> torch.Tensor:
    """A model's main output: the tensor, `.logits`, `.last_hidden_state`, or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        found = out.get(key) if isinstance(out, dict) else getattr(out, key, None)
        if isinstance(found, torch.Tensor):
            return found
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list) and out:
        return output_tensor(out[0])
    raise SlimError(f"cannot find a tensor in the model's output (a {type(out).__name__}); pass metric=")
