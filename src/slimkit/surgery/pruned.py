"""A "pruned from" note on physically shrunk layers, shown by `print(model)` and kept in .slim files.

Shrunk layers stay plain `nn.Linear` / `nn.Conv*d` / `nn.BatchNorm*d` (fast, exportable); the note
records their sizes before structured pruning and appears at the end of their `extra_repr`:

>>> print(model.fc1)
Linear(in_features=64, out_features=150, bias=True, pruned from out_features=300)
"""

from __future__ import annotations

import functools

from torch import nn

from slimkit.core.errors import SlimFormatError

KEY = "slim_pruned_from"


def _sizes(module: nn.Module) -> dict[str, int]:
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"num_features": module.num_features}
    return {}


def _repr(module: nn.Module) -> str:
    base = type(module).extra_repr(module)
    now = _sizes(module)
    was = ", ".join(f"{k}={v}" for k, v in module.__dict__[KEY].items() if now.get(k) != v)
    return f"{base}, pruned from {was}" if was else base


def set_note(module: nn.Module, sizes: dict[str, int]) -> None:
    """Record `sizes` (e.g. {"out_features": 300}) as what `module` was before pruning."""
    module.__dict__[KEY] = dict(sizes)
    module.__dict__["extra_repr"] = functools.partial(_repr, module)


def mark_pruned(old: nn.Module, new: nn.Module) -> None:
    """`new` replaces a shrunk `old`: carry `old`'s note, or start one from `old`'s sizes."""
    was = {**_sizes(old), **old.__dict__.get(KEY, {})}
    changed = {k: v for k, v in was.items() if _sizes(new).get(k) != v}
    if changed:
        set_note(new, {k: v for k, v in was.items() if k in _sizes(new)})


def note(module: nn.Module) -> dict[str, int] | None:
    """The sizes before pruning, or None for a layer that was never shrunk."""
    return module.__dict__.get(KEY)


def restore_note(module: nn.Module, sizes: object) -> None:
    """Put a note read from a .slim manifest back (loading side)."""
    if not isinstance(sizes, dict) or not all(isinstance(k, str) and type(v) is int and v > 0
                                              for k, v in sizes.items()):
        raise SlimFormatError(f"'pruned_from' must map sizes to positive integers, got {str(sizes)[:80]}")
    if not set(sizes) <= set(_sizes(module)):
        raise SlimFormatError(f"'pruned_from' names sizes a {type(module).__name__} does not have: {sorted(sizes)}")
    set_note(module, sizes)
