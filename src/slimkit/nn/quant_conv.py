"""A quantized `nn.Conv2d`: 1-8-bit codes of the weight flattened to (out, in/groups * kh * kw).

Every quantization method stores a Conv2d this way (int8 = 8-bit symmetric per output channel
with fp32 scales; rtn / gptq / qat = 1-8 bits per channel or in groups along the flattened
in_ch * kh * kw axis, bit-packed below 8 bits), with the same codes, scales and zero points as
`QuantLinear`, so the same codecs and ONNX decoders apply.

Runtime: weight-only. The weight is dequantized once (cached, rebuilt only when a code buffer
changes) and the convolution runs as a float `F.conv2d` in the input's dtype (fp32, or bf16 in a
model set to compute in bf16): integer convolution kernels were slower than fp32 at these sizes
and less exact (docs/notes/runtime-choices.md). So a quantized conv is smaller on disk and as fast
as fp32.

>>> from slimkit.nn.quant_math import rtn_quantize
>>> conv = nn.Conv2d(16, 32, 3, padding=1)
>>> q = QuantConv2d.from_conv(conv, rtn_quantize(conv.weight.reshape(32, -1), bits=4), symmetric=True)
>>> q(torch.randn(2, 16, 8, 8)).shape
torch.Size([2, 32, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.torch_utils import version_of
from slimkit.nn.kernels import current_mode
from slimkit.nn.quant_linear import _CodesMixin, _flag, _size
from slimkit.nn.quant_math import Granularity, QuantizedWeight
from slimkit.surgery.specs import register_module

PADDING_WORDS = ("same", "valid")


def _pair(spec: dict, key: str, least: int = 1) -> tuple[int, int]:
    value = spec[key]
    if not isinstance(value, list) or len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < least for v in value):
        raise ValueError(f"{key} must be a list of two integers >= {least}")
    return value[0], value[1]


def _as_pair(value: int | tuple | list) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@register_module
class QuantConv2d(_CodesMixin, nn.Module):
    """Weight-only quantized Conv2d (any kernel, stride, padding, dilation and groups; zero padding)."""

    slim_type = "QuantConv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, bits: int = 8,
                 symmetric: bool = True, granularity: Granularity | str = Granularity.CHANNEL,
                 group_size: int = 128, scale_dtype: str = "float32"):
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        if isinstance(padding, str) and padding not in PADDING_WORDS:
            raise ValueError(f"padding must be a pair of integers or one of {PADDING_WORDS}, got {padding!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _as_pair(kernel_size), _as_pair(stride)
        self.padding = padding if isinstance(padding, str) else _as_pair(padding)
        self.dilation = _as_pair(dilation)
        cols = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        self._init_codes(out_channels, cols, bits, symmetric, granularity, group_size, scale_dtype)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """The float weight's shape (out, in/groups, kh, kw); codes are stored flattened to 2-D."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, qw: QuantizedWeight, symmetric: bool,
                  scale_dtype: str = "float32") -> QuantConv2d:
        """The quantized form of `conv` with codes `qw` of its weight flattened to (out, -1)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, qw.bits, symmetric, qw.granularity,
                  qw.group_size, scale_dtype).to(qw.codes.device)
        new._load_quantized(qw)
        if conv.bias is not None:
            new.bias.data.copy_(conv.bias.detach().float())
        return new

    def dequantized_weight(self) -> torch.Tensor:
        """The decoded float32 weight, shaped like the original conv's (cached until a code,
        scale or zero buffer is replaced or changed in place)."""
        if current_mode() == "compact":  # keep no decoded copy: decode on every call
            self.__dict__.pop("_weight4d", None)
            return self._decode_uncached().reshape(self.weight_shape)
        buffers = self._buffers
        key = (torch.is_inference_mode_enabled(),
               *[(id(t), version_of(t)) for t in (buffers["qweight"], buffers["scale"], buffers["zero"])
                 if t is not None])
        cached = self.__dict__.get("_weight4d")
        if cached is None or cached[0] != key:   # a cheaper key than _DecodeCache's: one forward per image
            cached = (key, self._decode_uncached().reshape(self.weight_shape))
            self.__dict__["_weight4d"] = cached
        return cached[1]

    def runtime_state(self) -> dict:
        """Whether the decoded weight is kept, and the bytes it holds."""
        cached = self.__dict__.get("_weight4d")
        held = 0 if cached is None else cached[1].numel() * cached[1].element_size()
        return {"choices": {"all": "dense" if held else "decode per call"}, "cache_bytes": held}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.dequantized_weight(), self.bias
        if x.dtype != w.dtype:
            w, bias = w.to(x.dtype), None if bias is None else bias.to(x.dtype)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def float_module(self) -> nn.Conv2d:
        """A plain `nn.Conv2d` holding the decoded weight (for ONNX export of the float graph)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias.float())
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._codes_repr()}, weight-only (decoded once, float conv)")

    def slim_spec(self) -> dict:
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in": self.in_channels, "out": self.out_channels, "kernel": list(self.kernel_size),
                "stride": list(self.stride), "padding": padding, "dilation": list(self.dilation),
                "groups": self.groups, "bias": self.bias is not None, **self._codes_spec()}

    @classmethod
    def from_slim_spec(cls, spec: dict) -> QuantConv2d:
        padding = spec["padding"]
        if not (isinstance(padding, str) and padding in PADDING_WORDS):
            padding = _pair(spec, "padding", 0)
        groups = _size(spec, "groups")
        if groups < 1:
            raise ValueError("groups must be a positive integer")
        return cls(_size(spec, "in"), _size(spec, "out"), _pair(spec, "kernel"), _pair(spec, "stride"), padding,
                   _pair(spec, "dilation"), groups, _flag(spec, "bias"), **cls._codes_args(spec))
