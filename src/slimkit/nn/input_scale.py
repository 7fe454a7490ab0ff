"""A per-input-channel divisor in front of a layer: `y = layer(x / s)`.

AWQ and SmoothQuant (`slimkit.quantization.scaled`) multiply a layer's weight columns by
per-channel scales `s` and divide its inputs by them, which leaves the function unchanged. Where
the division can be folded into the op that makes the inputs (a norm's weight, the rows of a
previous Linear) nothing is added; where it cannot, the layer becomes
`nn.Sequential(scale=InputScale(s), linear=<quantized layer>)`: `s` is stored once (float16 in the
file, and rounded to float16 in memory, so the saved model reloads to identical outputs), and the
division runs in the input's dtype.

>>> layer = with_input_scale(nn.Linear(4, 2), torch.tensor([1.0, 2.0, 4.0, 0.5]))
>>> layer(torch.ones(1, 4)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from slimkit.io.artifact import set_codec
from slimkit.surgery.specs import register_module


def _size(spec: dict, key: str) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer")
    return value


@register_module
class InputScale(nn.Module):
    """Divide the last dimension of the input by `value` (one positive divisor per channel)."""

    slim_type = "InputScale"

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.register_buffer("value", torch.ones(features))
        set_codec(self, "value", [{"codec": "cast", "to": "float16"}])

    @classmethod
    def of(cls, scale: torch.Tensor) -> InputScale:
        """The module for divisors `scale` (rounded to float16, as stored)."""
        new = cls(scale.numel()).to(scale.device)
        new.value.copy_(scale.detach().reshape(-1).half().float())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.value.to(x.dtype)

    def float_module(self) -> InputScale:
        """Its float form for an export: itself (a division by a float vector)."""
        return self

    def extra_repr(self) -> str:
        return f"features={self.features}, float16 divisors"

    def slim_spec(self) -> dict:
        return {"features": self.features}

    @classmethod
    def from_slim_spec(cls, spec: dict) -> InputScale:
        return cls(_size(spec, "features"))


def with_input_scale(layer: nn.Module, scale: torch.Tensor) -> nn.Sequential:
    """`layer` behind an `InputScale(scale)`: `Sequential(scale=..., linear=layer)`."""
    return nn.Sequential(OrderedDict(scale=InputScale.of(scale), linear=layer))
