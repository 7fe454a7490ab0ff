"""Conv2d in the quantization methods: a conv's weight is the matrix (out, in/groups * kh * kw),
quantized by the same math as a Linear's and stored as a `QuantConv2d`.

- `weight_matrix(module)`: the weight as that matrix (a Linear's as it is).
- group-wise scales run along the flattened in_ch * kh * kw axis; where the group size does not
  divide it (a 3x3 conv over one channel has 9 inputs), the conv falls back as a Linear does
  (`slimkit.quantization.groups`) and the report says so.
- `layer_rows(module, x)`: what a layer multiplies its weight matrix with, one row per output
  position (im2col via `F.unfold` for a conv), for GPTQ's Hessian (`slimkit.dist.calibration`).
- `quantized_layer(module, qw, ...)`: the packed runtime module for codes `qw`.

>>> layer_rows(nn.Conv2d(3, 8, 3, padding=1), torch.randn(2, 3, 5, 5)).shape   # 2 * 25 positions
torch.Size([50, 27])
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.dist.calibration import layer_rows
from slimkit.nn.quant_conv import QuantConv2d
from slimkit.nn.quant_linear import QuantLinear
from slimkit.nn.quant_math import Granularity, QuantizedWeight, rtn_quantize

CONV_TYPES = (nn.Conv2d,)
__all__ = ["int8_conv", "is_conv", "layer_rows", "quantized_layer", "unsupported", "weight_matrix"]


def is_conv(module: nn.Module) -> bool:
    """Whether `module` is a plain `nn.Conv2d` (subclasses and Conv1d/3d are not handled)."""
    return type(module) is nn.Conv2d


def unsupported(module: nn.Module) -> str | None:
    """Why a Conv2d cannot be quantized (only zero padding is), or None."""
    if is_conv(module) and module.padding_mode != "zeros":
        return f"Conv2d with padding_mode={module.padding_mode!r} is not supported (zero padding only)"
    return None


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in/groups * kh * kw) for a conv, as it is for a Linear.

    >>> weight_matrix(nn.Conv2d(16, 32, 3)).shape
    torch.Size([32, 144])
    """
    w = module.weight
    return w.reshape(w.shape[0], -1) if w.dim() > 2 else w


def quantized_layer(module: nn.Module, qw: QuantizedWeight, symmetric: bool, scale_dtype: str) -> nn.Module:
    """The packed runtime module for codes `qw` of `module`'s weight matrix: `QuantConv2d` for a
    conv, `QuantLinear` for a Linear (the module's float bias is kept)."""
    if is_conv(module):
        return QuantConv2d.from_conv(module, qw, symmetric, scale_dtype)

    return QuantLinear.from_quantized(qw, module.bias, symmetric, scale_dtype)


def int8_conv(conv: nn.Conv2d) -> nn.Module:
    """`conv` with int8 weights: symmetric, per output channel, fp32 scales (the codes of
    `quantize_int8_rows` shifted by 128), weight-only at run time (see `slimkit.nn.quant_conv`)."""

    qw = rtn_quantize(weight_matrix(conv), 8, True, Granularity.CHANNEL)
    return quantized_layer(conv, qw, True, "float32")
