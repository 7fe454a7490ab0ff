"""Embedded default models and data; nothing is downloaded.

>>> import slimkit as sk
>>> model = sk.zoo.load("lenet-300-100")   # trained on first use (seconds), then cached
>>> data = sk.zoo.data("digits")            # train / val / test splits
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.zoo import builtin as _builtin  # noqa: F401  (registers the digits models)
from slimkit.zoo import minilm as _minilm  # noqa: F401  (registers minilm)
from slimkit.zoo import smollm2 as _smollm2  # noqa: F401  (registers smollm2)
from slimkit.zoo import tasks as _tasks  # noqa: F401  (registers the task finder)
from slimkit.zoo.corpus import sentences
from slimkit.zoo.digits import load_digits
from slimkit.zoo.registry import ZOO, base_of, entry, names, tag


def load(name: str) -> nn.Module:
    """A trained builtin model by name (`lenet-300-100`, `lenet5`, `minilm`, `smollm2`)."""
    return entry(name).load()


def data(name: str) -> Any:
    """Data by name: `digits` (or a digits model's name) -> DigitsData; `english` (or `minilm`)
    -> list of sentences."""

    if name in ("digits", "lenet-300-100", "lenet5"):
        return load_digits()
    if name in ("english", "minilm"):

        return sentences()
    raise ValueError(f"unknown data set {name!r} (known: digits, english)")


__all__ = ["ZOO", "base_of", "data", "entry", "load", "names", "tag"]
