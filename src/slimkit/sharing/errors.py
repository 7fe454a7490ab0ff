"""The sharing family's option errors, below both the configs (`api`) and the code that applies
them (`apply_*`), so that neither has to import the other to report a bad option."""

from __future__ import annotations

from typing import Any

from slimkit.core.errors import ConfigError


class ShareConfigError(ConfigError):
    """An option outside its range (one line, naming the option)."""


def in_range(method: str, name: str, value: Any, lo: float, hi: float) -> None:
    """One-line range check run before pydantic (which reports type errors itself)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not lo <= value <= hi:
        raise ShareConfigError(f"{method}: {name} must be in {lo:g}..{hi:g}, got {value!r}")
