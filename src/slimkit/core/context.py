"""The uncompressed model of a running recipe, for stages that need it (e.g. `recover`).

>>> with original_model(copy_of_input):
...     model = apply_(model, RecoveryConfig(), task)      # distils from copy_of_input
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import nn

_ORIGINAL: ContextVar[nn.Module | None] = ContextVar("slimkit_original_model", default=None)


@contextmanager
def original_model(model: nn.Module | None) -> Iterator[None]:
    """Make `model` the uncompressed reference of the stages run inside the block."""
    token = _ORIGINAL.set(model)
    try:
        yield
    finally:
        _ORIGINAL.reset(token)


def current_original() -> nn.Module | None:
    """The reference set by the innermost `original_model` block, or None."""
    return _ORIGINAL.get()
