"""`QuantLinear`: a weight-only quantized Linear (1-8-bit codes, per-tensor, per-channel or group-wise
scales, bit-packed in the .slim file) and the kernels it runs.

On fp32 inputs in auto kernel mode a CPU layer big enough to gain (`nbits.MIN_WEIGHTS`) chooses per
shape bucket (`slimkit.nn.kernels`) among:
- "dense": an fp32 matmul on the weight decoded once and cached (keyed on the buffers' versions);
- "pack": torch's own low-bit kernel on the codes (`slimkit.nn.torch_pack`: `_weight_int4pack_mm_for_cpu`
  for 1-4-bit codes, `_weight_int8pack_mm` for symmetric per-channel 5-8-bit ones), bf16 activations;
- "nbits": ONNX Runtime's MatMulNBits on the codes (`slimkit.nn.nbits`), int8 activations per block.
"pack" and "nbits" read the codes (lean): a layer that runs one at batch 1 keeps no decoded copy.
Other inputs (bf16 / fp16, gradients, "dense" / "compact" modes) multiply by the decoded weight.

>>> q = QuantLinear.from_quantized(rtn_quantize(w, 4, False, "group", 64), None, symmetric=False)  # doctest: +SKIP
>>> q(torch.randn(1, w.shape[1])).shape                                                           # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import slimkit.nn.nbits as nbits
import slimkit.nn.torch_pack as torch_pack
from slimkit.nn.codes import _CodesMixin, _DecodeCache, _flag, _size
from slimkit.nn.kernels import KernelChoice, current_mode, rel_err, settled_kernel
from slimkit.nn.quant_math import Granularity, QuantizedWeight, quantize_per_token
from slimkit.nn.siblings import link as _link_after_load  # noqa: F401 - registers it with slimkit.load
from slimkit.surgery.specs import register_module


@register_module
class QuantLinear(_CodesMixin, nn.Module):
    """Weight-only quantized Linear: 1-8-bit codes, decoded once and cached for fp32 matmuls."""

    slim_type = "QuantLinear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4,
                 symmetric: bool = True, granularity: Granularity | str = Granularity.GROUP,
                 group_size: int = 128, scale_dtype: str = "float16"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_codes(out_features, in_features, bits, symmetric, granularity, group_size, scale_dtype)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None, symmetric: bool,
                       scale_dtype: str = "float16") -> QuantLinear:
        out_f, in_f = qw.codes.shape
        new = cls(in_f, out_f, bias is not None, qw.bits, symmetric, qw.granularity, qw.group_size,
                  scale_dtype).to(qw.codes.device)
        new._load_quantized(qw)
        if bias is not None:
            new.bias.data.copy_(bias.detach().float())
        return new

    def dequantized_weight(self) -> torch.Tensor:
        return self._decode_all()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._traced(x)
        if x.dtype is torch.float32 and self._may_choose(x):
            y = self._stacked(x)
            if y is not None:
                return y
            x2 = x.reshape(-1, self.in_features)
            choice = self.__dict__.get("_kernel_choice") or self._new_choice()
            y = choice.run(x2, lambda: self._reference(x2))
            return y.reshape(*x.shape[:-1], self.out_features)
        w = self._decode_all()
        bias = self.bias
        if x.dtype != w.dtype:
            w, bias = w.to(x.dtype), None if bias is None else bias.to(x.dtype)
        return F.linear(x, w, bias)

    def _traced(self, x: torch.Tensor) -> torch.Tensor:
        """Inside `torch.compile`: the kernel this layer settled on in eager calls of the same shape
        (`settled_kernel`), else a matmul on the decoded weight (the cached copy if there is one)."""
        y = self._stacked(x) if x.dtype is torch.float32 else None
        if y is not None:
            return y
        kernel = settled_kernel(self, x.numel() // self.in_features) if x.dtype is torch.float32 else None
        if kernel is not None:
            return kernel(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        w = self._cache.value if self._cache.value is not None else self._decode_uncached()
        bias = self.bias
        if x.dtype != w.dtype:
            w, bias = w.to(x.dtype), None if bias is None else bias.to(x.dtype)
        return F.linear(x, w, bias)

    def _stacked(self, x: torch.Tensor) -> torch.Tensor | None:
        """This layer's output on a single row from the kernel it shares with its sibling layers
        (`slimkit.nn.siblings`), or None where it runs its own."""
        group = self.__dict__.get("_siblings")
        if group is None or x.numel() != self.in_features:
            return None
        return group.run(self.__dict__["_sibling_index"], x)

    def _may_choose(self, x: torch.Tensor) -> bool:
        """Whether this call goes through the kernel choice: auto mode, no gradient wanted, a CPU
        layer big enough to gain with a kernel that reads its codes (see the module docstring)."""
        if current_mode() != "auto" or x.numel() == 0 or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None and self.bias.requires_grad)):
            return False
        lean = self.__dict__.get("_lean")
        if lean is None:
            lean = self.__dict__["_lean"] = self._lean_kernels()
        return bool(lean)

    def _lean_kernels(self) -> tuple[str, ...]:
        """The kernels reading the codes that fit this layer here, if it is big enough to gain."""
        rows, cols = self.out_features, self.in_features
        if rows * cols < nbits.MIN_WEIGHTS:
            return ()
        group = cols // self.scale.shape[1]
        found = []
        if torch_pack.supports_int4(rows, cols, self.bits, group) or torch_pack.supports_int8(
                self.bits, self.symmetric, self.scale.shape[1] == 1 and self.scale.shape[0] == rows):
            found.append("pack")
        if nbits.supports(rows, cols, self.bits, group):
            found.append("nbits")
        return tuple(found)

    def _new_choice(self) -> KernelChoice:
        kind = ("QuantLinear", self.in_features, self.out_features, self.bits, self.symmetric,
                self.granularity.value, self.group_size, self.bias is not None)
        lean = self.__dict__.get("_lean") or self._lean_kernels()
        candidates = {"dense": self._dense, "decode": self._decode_call, **{n: getattr(self, f"_{n}") for n in lean}}
        choice = self.__dict__["_kernel_choice"] = KernelChoice(
            kind, candidates, lean=lean, decoded=("dense",), release=self._release, per_call=("decode",))
        return choice

    def _dense(self, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(x2, self._decode_all(), self.bias)

    def _decode_call(self, x2: torch.Tensor) -> torch.Tensor:
        """The weight decoded for this call only (no cache kept): exact, and at fp32 speed for many rows."""
        return F.linear(x2, self._decode_uncached(), self.bias)

    def _nbits(self, x2: torch.Tensor) -> torch.Tensor:
        """MatMulNBits on the codes (`slimkit.nn.nbits`): bits/8 bytes per weight read, activations
        quantized to int8 per block of inputs."""
        cache = self.__dict__.get("_nbits_cache") or self.__dict__.setdefault("_nbits_cache", _DecodeCache())
        kernel = cache.get(self, ("qweight", "scale", "zero", "bias"), lambda: nbits.NBitsMatMul(
            self.qweight, self.scale, self.zero, self.bits, self.bias))
        return kernel(x2)

    def _pack(self, x2: torch.Tensor) -> torch.Tensor:
        """torch's int4pack / int8pack kernel on the codes (`slimkit.nn.torch_pack`), packed once."""
        cache = self.__dict__.get("_pack_cache") or self.__dict__.setdefault("_pack_cache", _DecodeCache())
        kernel = cache.get(self, ("qweight", "scale", "zero", "bias"), self._build_pack)
        return kernel(x2)

    def _build_pack(self):
        return torch_pack.codes_kernel(self.qweight, self.scale, self.zero, self.bits, self.bias)

    def _reference(self, x2: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The exact output (decoded weight, fp32 activations) and the error a kernel may have against
        it: twice that of int8 activations per token (as `Int8Linear` allows its integer kernels)."""
        with torch.no_grad():
            weight = self._decode_all()
            ref = F.linear(x2, weight, self.bias)
            xq, xs = quantize_per_token(x2)
            emulated = F.linear(xq.float().mul_(xs), weight, self.bias)
            return ref, 2.0 * rel_err(emulated, ref) + 1e-5

    def _release(self, in_use: set[str]) -> None:
        if "dense" not in in_use:
            self._cache.value = None
        for name in ("nbits", "pack"):
            if name not in in_use and self.__dict__.get(f"_{name}_cache") is not None:
                self.__dict__[f"_{name}_cache"].value = None

    def runtime_state(self) -> dict:
        """What this layer runs per shape bucket (or "all" when it always decodes), and its cache bytes."""
        state = super().runtime_state()
        for name in ("_nbits_cache", "_pack_cache"):
            kernel = self.__dict__.get(name)
            if kernel is not None and kernel.value is not None:
                state["cache_bytes"] += kernel.value.nbytes
        group = self.__dict__.get("_siblings")
        if group is not None and group.members[0] is self:   # the stacked kernel, counted once
            state["cache_bytes"] += group.nbytes()
            if group.cache.value is not None:
                state["stacked"] = f"{len(group.members)} layers, {group.fused_calls} calls"
        choice = self.__dict__.get("_kernel_choice")
        if choice is not None and choice.names:
            state["choices"] = choice.describe()
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._codes_repr()}")

    def slim_spec(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "bias": self.bias is not None,
                **self._codes_spec()}

    @classmethod
    def from_slim_spec(cls, spec: dict) -> QuantLinear:
        return cls(_size(spec, "in"), _size(spec, "out"), _flag(spec, "bias"), **cls._codes_args(spec))
