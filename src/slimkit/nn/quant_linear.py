"""`Int8Linear`: int8 per-channel weights that run on integer or low-bit kernels; and the home of the
public names of slimkit's quantized Linear layers (`QuantLinear` lives in `slimkit.nn.weight_only`,
the compute-dtype helpers in `slimkit.nn.compute_dtype`, the shared code layout in `slimkit.nn.codes`;
all stay importable from here).

On fp32 inputs `Int8Linear` has several kernels and picks per input shape (`slimkit.nn.kernels`): the
integer path (each row quantized to int8 per token, `torch._int_mm`, rescaled in fp32; with a
calibrated `input_scale` the activation scale is fixed instead), fbgemm's packed int8 kernel on rows
scaled to a common range (the same per-token rounding), torch's `_weight_int8pack_mm` on the int8
codes with bf16 activations and ONNX Runtime's MatMulNBits (both read 1 byte per weight: batch-1
decoding), and an fp32 matmul on the weight decoded once. Integer kernels are tried only where the
CPU has VNNI or AMX; elsewhere they are 20-40x slower than fp32 (`_int_mm`) or saturate (fbgemm). On
bf16 / fp16 inputs (a model running in `compute_dtype="bfloat16"`, see `resolve_compute_dtype`) it
multiplies in the input's dtype with the int8 weight dequantized once and cached (W8A16): on CPUs
with AMX / AVX-512 BF16 a bf16 matmul is faster than `_int_mm` plus activation quantization.

>>> q = Int8Linear.from_linear(nn.Linear(64, 32))
>>> q(torch.randn(5, 64)).shape
torch.Size([5, 32])
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import slimkit.nn.nbits as nbits
import slimkit.nn.torch_pack as torch_pack
from slimkit.nn.codes import _CodesMixin, _DecodeCache, _flag, _size
from slimkit.nn.compute_dtype import (
    COMPUTE_DTYPES,
    COMPUTE_ENV,
    SCALE_DTYPES,
    cast_of,
    check_compute_dtype,
    fast_bf16,
    forced_compute_dtype,
    resolve_compute_dtype,
)
from slimkit.nn.kernels import KernelChoice, current_mode, fast_int_mm, has_fbgemm, rel_err, settled_kernel
from slimkit.nn.quant_math import int8_matmul, quantize_int8_rows, quantize_per_token, quantize_static
from slimkit.nn.weight_only import QuantLinear
from slimkit.surgery.specs import register_module

__all__ = ["COMPUTE_DTYPES", "COMPUTE_ENV", "SCALE_DTYPES", "Int8Linear", "QuantLinear", "_CodesMixin",
           "_DecodeCache", "_flag", "_size", "cast_of", "check_compute_dtype", "fast_bf16",
           "forced_compute_dtype", "resolve_compute_dtype", "use_compiled_int8"]


def _w8a8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """Dynamic per-token int8 linear written for `torch.compile` to fuse (same math as eager)."""
    x = x.float()
    amax = x.abs().amax(1, keepdim=True).clamp_min(1e-12)
    xq = torch.round(x * (127.0 / amax)).to(torch.int8)
    y = torch._int_mm(xq, qweight.t()).float() * (amax / 127.0) * scale
    return y if bias is None else y + bias


_COMPILED: dict = {"fn": None}


def use_compiled_int8(enable: bool = True) -> bool:
    """Opt in to `torch.compile` fusion of `Int8Linear`'s activation quantization and rescaling
    (CPU; compiles on first use, seconds to a minute; see docs/notes/runtime-choices.md).
    `SLIMKIT_COMPILE=1` turns it on.
    Returns whether compiled kernels are active."""
    if not enable:
        _COMPILED["fn"] = None
        return False
    try:
        _COMPILED["fn"] = torch.compile(_w8a8_linear, dynamic=True)
    except Exception:  # noqa: BLE001 - no compiler available: stay eager
        _COMPILED["fn"] = None
    return _COMPILED["fn"] is not None


if os.environ.get("SLIMKIT_COMPILE") == "1":
    use_compiled_int8(True)


@register_module
class Int8Linear(nn.Module):
    """y = (q8(x) @ Wq^T) * s_x * s_w + b, with int8 weights and dynamic per-token int8 inputs."""

    slim_type = "Int8Linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, static: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.static = in_features, out_features, static
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("input_scale", torch.ones(1) if static else None)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_scale: float | None = None) -> Int8Linear:
        """Quantize `linear`; with `input_scale` (from calibration) activations use that fixed scale."""
        w = linear.weight.detach()
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  static=input_scale is not None).to(w.device)
        q, s = quantize_int8_rows(w)
        new.qweight.copy_(q)
        new.scale.copy_(s)
        if input_scale is not None:
            new.input_scale.fill_(input_scale)
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach().float())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = settled_kernel(self, x.numel() // self.in_features) if torch.compiler.is_compiling() \
            and x.dtype is torch.float32 else None
        if kernel is not None:   # inside torch.compile: the kernel eager calls of this shape settled on
            return kernel(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        dtype = x.dtype
        if dtype is not torch.float32:
            if dtype in (torch.bfloat16, torch.float16):
                return self._forward_low(x)
            x = x.float()
        flat = x.dim() != 2
        x2 = x.reshape(-1, self.in_features) if flat else x
        mode = current_mode()
        if mode == "dense" or (x2.requires_grad and torch.is_grad_enabled()):
            y = self._dense(x2)  # exact gradients; the integer kernels have none
        elif mode == "compact" or x2.shape[0] == 0:
            y = self._integer(x2)
        else:
            choice = self.__dict__.get("_kernel_choice") or self._new_choice()
            y = choice.run(x2, lambda: self._reference(x2))
        if flat:
            y = y.reshape(*x.shape[:-1], self.out_features)
        return y if dtype is torch.float32 else y.to(dtype)

    def _new_choice(self) -> KernelChoice:
        """The kernels auto mode may pick from on this machine (see slimkit.nn.kernels)."""
        candidates = {"dense": self._dense, "decode": self._decode_call}
        if not self.static and has_fbgemm():
            candidates["fbgemm"] = self._fbgemm
        if fast_int_mm() or _COMPILED["fn"] is not None:
            candidates["int"] = self._integer
        big = self.in_features * self.out_features >= nbits.MIN_WEIGHTS
        if big and not self.static and torch_pack.available():
            candidates["pack"] = self._pack_int8
        if nbits.supports(self.out_features, self.in_features, 8, self.in_features):
            candidates["nbits"] = self._nbits
        kind = ("Int8Linear", self.in_features, self.out_features, self.static, self.bias is not None)
        choice = self.__dict__["_kernel_choice"] = KernelChoice(
            kind, candidates, lean=("nbits", "pack"), decoded=("dense",), release=self._release, per_call=("decode",))
        return choice

    def _release(self, in_use: set[str]) -> None:
        """Drop the caches of the kernels this layer no longer runs (see KernelChoice)."""
        for name in ("dense", "fbgemm", "nbits", "pack"):
            cache = f"_{name}_cache"
            if name not in in_use and self.__dict__.get(cache) is not None:
                self.__dict__[cache].value = None

    def _nbits(self, x2: torch.Tensor) -> torch.Tensor:
        """ONNX Runtime's MatMulNBits on the int8 codes (as uint8 + 128; `slimkit.nn.nbits`): it
        reads 1 byte per weight, with activations quantized per block of inputs."""
        cache = self.__dict__.get("_nbits_cache") or self.__dict__.setdefault("_nbits_cache", _DecodeCache())
        kernel = cache.get(self, ("qweight", "scale", "bias"), lambda: nbits.NBitsMatMul(
            (self.qweight.to(torch.int16) + 128).to(torch.uint8), self.scale[:, None], None, 8, self.bias))
        return kernel(x2)

    def _pack_int8(self, x2: torch.Tensor) -> torch.Tensor:
        """torch's `_weight_int8pack_mm` on the int8 codes themselves (no copy), bf16 activations
        (`slimkit.nn.torch_pack`): 1 byte per weight read."""
        cache = self.__dict__.get("_pack_cache") or self.__dict__.setdefault("_pack_cache", _DecodeCache())
        kernel = cache.get(self, ("qweight", "scale", "bias"), lambda: torch_pack.Int8PackMatMul(
            self.qweight, self.scale, self.bias))
        return kernel(x2)

    def _reference(self, x2: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The layer's output on its stored weights with fp32 activations, and the relative error
        a kernel may have against it: twice that of the layer's own integer math (emulated in fp32)."""
        with torch.no_grad():
            ref = F.linear(x2, self.dequantized_weight(), self.bias)   # decoded for this check only: no cache left
            if self.input_scale is not None:
                xq, xs = quantize_static(x2, self.input_scale).float(), self.input_scale
            else:
                xq, xs = quantize_per_token(x2)
                xq = xq.float()
            emulated = (xq @ self.qweight.float().t()).mul_(xs).mul_(self.scale)
            if self.bias is not None:
                emulated.add_(self.bias)
            return ref, 2.0 * rel_err(emulated, ref) + 1e-5

    def _integer(self, x2: torch.Tensor) -> torch.Tensor:
        """int8 activations (per token, or the calibrated static scale) times int8 weights."""
        if self.input_scale is not None:
            acc = int8_matmul(quantize_static(x2, self.input_scale), self.qweight.t())
            y = acc.float().mul_(self.scale * self.input_scale)
        elif _COMPILED["fn"] is not None and x2.device.type == "cpu":
            try:
                return _COMPILED["fn"](x2, self.qweight, self.scale, self.bias)
            except Exception:  # noqa: BLE001 - compilation failed at first call: go eager for good
                _COMPILED["fn"] = None
                return self._integer(x2)
        else:
            xq, xs = quantize_per_token(x2)
            y = int8_matmul(xq, self.qweight.t()).float().mul_(xs).mul_(self.scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y

    def _dense(self, x2: torch.Tensor) -> torch.Tensor:
        """fp32 matmul on the weight dequantized once (cached: 4 bytes per weight)."""
        cache = self.__dict__.get("_dense_cache") or self.__dict__.setdefault("_dense_cache", _DecodeCache())
        weight = cache.get(self, ("qweight", "scale"), self.dequantized_weight)
        return F.linear(x2, weight, self.bias)

    def _decode_call(self, x2: torch.Tensor) -> torch.Tensor:
        """The weight decoded for this call only (no cache kept): exact, and at fp32 speed for many rows."""
        return F.linear(x2, self.dequantized_weight(), self.bias)

    def _fbgemm(self, x2: torch.Tensor) -> torch.Tensor:
        """fbgemm's int8 kernel with per-token activation scales: each row is divided by its
        absolute maximum, so fbgemm's per-tensor uint8 quantization is a per-token one, and the
        int32 result is scaled back by it (fast on AVX2 without VNNI, where `_int_mm` is not)."""
        cache = self.__dict__.get("_fbgemm_cache") or self.__dict__.setdefault("_fbgemm_cache", _DecodeCache())
        packed = cache.get(self, ("qweight", "scale"), self._pack)
        amax = x2.abs().amax(1, keepdim=True).clamp_min_(1e-12)
        y = torch.ops.quantized.linear_dynamic(x2 / amax, packed, False).mul_(amax)
        if self.bias is not None:
            y.add_(self.bias)
        return y

    def _pack(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-channel qint8 tensors are deprecated, not gone
            weight = torch._make_per_channel_quantized_tensor(
                self.qweight.cpu(), self.scale.double().cpu(), torch.zeros(self.out_features, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(weight, None)

    def runtime_state(self) -> dict:
        """What this layer runs per shape bucket, and the bytes its caches hold."""
        held = 0
        dense = self.__dict__.get("_dense_cache")
        if dense is not None and dense.value is not None:
            held += dense.value.numel() * dense.value.element_size()
        packed = self.__dict__.get("_fbgemm_cache")
        if packed is not None and packed.value is not None:
            held += self.in_features * self.out_features + 4 * self.out_features
        low = self.__dict__.get("_low_cache")
        if low is not None and low.value is not None:
            held += low.value[0].numel() * low.value[0].element_size()
        for name in ("_nbits_cache", "_pack_cache"):
            kernel = self.__dict__.get(name)
            if kernel is not None and kernel.value is not None:
                held += kernel.value.nbytes
        choice = self.__dict__.get("_kernel_choice")
        return {"choices": choice.describe() if choice else {}, "cache_bytes": held}

    def _forward_low(self, x: torch.Tensor) -> torch.Tensor:
        """W8A16: a matmul in `x.dtype` with the weight dequantized once (cached, 2 bytes/weight)."""
        if not hasattr(self, "_low_cache"):
            self._low_cache = _DecodeCache()
        weight, bias = self._low_cache.get(self, ("qweight", "scale", "bias"),
                                           lambda: self._low_weights(x.dtype), x.dtype, x.device)
        if self.bias is not None and self.bias.requires_grad and torch.is_grad_enabled():
            bias = self.bias.to(x.dtype)  # keep the bias gradient
        return F.linear(x, weight, bias)

    def _low_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            weight = self.dequantized_weight().to(dtype)
            return weight, None if self.bias is None else self.bias.detach().to(dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        act = "per-tensor static" if self.static else "per-token dynamic"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight_bits=8 per-channel, act_bits=8 {act} on fp32 inputs "
                f"(bf16/fp16 inputs: W8A16, weight dequantized once)")

    def slim_spec(self) -> dict:
        spec = {"in": self.in_features, "out": self.out_features, "bias": self.bias is not None}
        return {**spec, "static": True} if self.static else spec

    @classmethod
    def from_slim_spec(cls, spec: dict) -> Int8Linear:
        static = _flag(spec, "static") if "static" in spec else False
        return cls(_size(spec, "in"), _size(spec, "out"), _flag(spec, "bias"), static)
