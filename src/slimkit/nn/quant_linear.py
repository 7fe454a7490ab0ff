"""Quantized Linear layers that run on integer kernels or decode packed weights.

Over 400 lines: the two layers share their kernel-choice and code-cache plumbing (`_CodesMixin`,
`_DecodeCache`); splitting `QuantLinear` into its own file is the next step.

- `Int8Linear`: int8 per-channel weights. On fp32 inputs it has three kernels and picks per
  input shape (`slimkit.nn.kernels`): the integer path (each row quantized to int8 per token,
  `torch._int_mm`, rescaled in fp32; with a calibrated `input_scale` the activation scale is
  fixed instead), fbgemm's packed int8 kernel on rows scaled to a common range (the same per-token
  rounding), and an fp32 matmul on the weight decoded once. Integer kernels are tried only where
  the CPU has VNNI or AMX; elsewhere they are 20-40x slower than fp32 (`_int_mm`) or saturate
  (fbgemm). On bf16 / fp16 inputs (a model running in `compute_dtype="bfloat16"`, see
  `resolve_compute_dtype`) it multiplies in the input's dtype with the int8 weight dequantized
  once and cached (W8A16): on CPUs with AMX / AVX-512 BF16 a bf16 matmul is faster than
  `_int_mm` plus activation quantization.
- `QuantLinear`: 1-8-bit weight-only codes (bit-packed in the .slim file) with per-tensor,
  per-channel or group-wise scales; the weight is decoded once and cached (keyed on the
  buffers' versions), so it runs at fp32 speed.

>>> q = Int8Linear.from_linear(nn.Linear(64, 32))
>>> q(torch.randn(5, 64)).shape
torch.Size([5, 32])
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.io.artifact import set_codec
from slimkit.nn import nbits
from slimkit.nn.kernels import KernelChoice, current_mode, fast_int_mm, has_fbgemm, rel_err
from slimkit.nn.quant_math import (
    Granularity,
    QuantizedWeight,
    check_bits,
    check_group,
    group_view,
    int8_matmul,
    quantize_int8_rows,
    quantize_per_token,
    quantize_static,
)
from slimkit.nn.quant_math import dequantize as dequantize_groups
from slimkit.surgery.specs import register_module

SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
COMPUTE_ENV = "SLIMKIT_COMPUTE_DTYPE"


@functools.lru_cache(maxsize=1)
def fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX-512 BF16), read once from
    torch's CPU feature flags (deterministic: no timing involved).

    >>> fast_bf16() in (True, False)
    True
    """
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for probe in probes:
        try:
            if getattr(torch.cpu, probe)():
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


def check_compute_dtype(value: object, where: str = "compute_dtype") -> str:
    """`value` if it is one of COMPUTE_DTYPES, else ValueError naming it."""
    if value not in COMPUTE_DTYPES:
        raise ValueError(f"{where} must be one of {', '.join(COMPUTE_DTYPES)}, got {value!r}")
    return str(value)


_FORCED: list[str] = []


@contextlib.contextmanager
def forced_compute_dtype(mode: str = "float32") -> Iterator[None]:
    """Run every quantized model in `mode` inside the block, whatever its own compute dtype, e.g.
    to compare the fp32 integer path with an export of it.

    >>> with forced_compute_dtype("float32"):
    ...     out = model(**inputs)          # fp32 activations, int8 matmuls
    """
    _FORCED.append(check_compute_dtype(mode))
    try:
        yield
    finally:
        _FORCED.pop()


def resolve_compute_dtype(mode: str) -> torch.dtype:
    """The dtype a model runs its activations in for `mode`: "auto" is bfloat16 where the CPU has
    fast bf16 (`fast_bf16()`), else float32; the environment variable SLIMKIT_COMPUTE_DTYPE
    (float32 / bfloat16 / float16) overrides "auto" (e.g. to pick the fp32 path at load time),
    and `forced_compute_dtype` overrides every mode.

    >>> resolve_compute_dtype("float32")
    torch.float32
    """
    mode = _FORCED[-1] if _FORCED else mode
    if mode == "auto":
        env = os.environ.get(COMPUTE_ENV, "auto")
        mode = env if env in COMPUTE_DTYPES and env != "auto" else ("bfloat16" if fast_bf16() else "float32")
    return SCALE_DTYPES[mode]


def cast_of(fn) -> str | None:
    """The float dtype name a `Module._apply` function casts every float tensor to
    (`model.to(torch.bfloat16)`, `.float()`, `.half()`), or None for moves that keep dtypes."""
    try:
        a, b = fn(torch.zeros(1)), fn(torch.zeros(1, dtype=torch.bfloat16))
    except Exception:  # noqa: BLE001 - an _apply function we cannot probe: assume no cast
        return None
    names = {v: k for k, v in SCALE_DTYPES.items()}
    return names.get(a.dtype) if a.dtype == b.dtype else None


def _flag(spec: dict, key: str) -> bool:
    value = spec[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _size(spec: dict, key: str) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


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
        candidates = {"dense": self._dense}
        if not self.static and has_fbgemm():
            candidates["fbgemm"] = self._fbgemm
        if fast_int_mm() or _COMPILED["fn"] is not None:
            candidates["int"] = self._integer
        if nbits.supports(self.out_features, self.in_features, 8, self.in_features):
            candidates["nbits"] = self._nbits
        kind = ("Int8Linear", self.in_features, self.out_features, self.static, self.bias is not None)
        choice = self.__dict__["_kernel_choice"] = KernelChoice(
            kind, candidates, lean=("nbits",), decoded=("dense",), release=self._release)
        return choice

    def _release(self, in_use: set[str]) -> None:
        """Drop the caches of the kernels this layer no longer runs (see KernelChoice)."""
        for name, cache in (("dense", "_dense_cache"), ("fbgemm", "_fbgemm_cache"), ("nbits", "_nbits_cache")):
            if name not in in_use and self.__dict__.get(cache) is not None:
                self.__dict__[cache].value = None

    def _nbits(self, x2: torch.Tensor) -> torch.Tensor:
        """ONNX Runtime's MatMulNBits on the int8 codes (as uint8 + 128; `slimkit.nn.nbits`): it
        reads 1 byte per weight, with activations quantized per block of inputs."""
        cache = self.__dict__.get("_nbits_cache") or self.__dict__.setdefault("_nbits_cache", _DecodeCache())
        kernel = cache.get(self, ("qweight", "scale", "bias"), lambda: nbits.NBitsMatMul(
            (self.qweight.to(torch.int16) + 128).to(torch.uint8), self.scale[:, None], None, 8, self.bias))
        return kernel(x2)

    def _reference(self, x2: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The layer's output on its stored weights with fp32 activations, and the relative error
        a kernel may have against it: twice that of the layer's own integer math (emulated in fp32)."""
        with torch.no_grad():
            ref = self._dense(x2)
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
        kernel = self.__dict__.get("_nbits_cache")
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


class _DecodeCache:
    """A decoded copy of a module's weight, rebuilt when a source tensor is replaced or changed in
    place (checked each call from the module's own dicts: attribute access costs microseconds)."""

    def __init__(self):
        self.key: tuple | None = None
        self.value = None

    def __deepcopy__(self, memo: dict) -> _DecodeCache:
        """Empty: a copy rebuilds what it needs at its first call (a cached ONNX Runtime session
        cannot be copied, and a decoded weight need not be)."""
        return _DecodeCache()

    def __getstate__(self) -> dict:
        return {"key": None, "value": None}

    def get(self, module: nn.Module, names: tuple[str, ...], build, *extra: object):
        return self.get_tensors([module._buffers.get(n, module._parameters.get(n)) for n in names],
                                build, *extra)

    def get_tensors(self, tensors: list[torch.Tensor | None], build, *extra: object):
        key = (torch.is_inference_mode_enabled(), *extra,
               *[(id(t), t._version) for t in tensors if t is not None])
        if key != self.key or self.value is None:
            self.value, self.key = build(), key
        return self.value

    def nbytes(self) -> int:
        """Bytes the cached tensor(s) hold (0 when empty)."""
        values = self.value if isinstance(self.value, tuple) else (self.value,)
        return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


class _CodesMixin:
    """Shared layout of `QuantLinear` and `QuantEmbedding`: codes, scale, optional zero."""

    def _init_codes(self, rows: int, cols: int, bits: int, symmetric: bool,
                    granularity: Granularity | str, group_size: int, scale_dtype: str) -> None:
        self.bits = check_bits(bits)
        if symmetric and bits < 2:
            raise ValueError("bits=1 needs symmetric=False")
        self.symmetric = symmetric
        self.granularity = Granularity(granularity)
        self.group_size = check_group(cols, self.granularity, group_size)
        if scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {sorted(SCALE_DTYPES)}, got {scale_dtype!r}")
        self.scale_dtype = scale_dtype
        r = 1 if self.granularity is Granularity.TENSOR else rows
        g = cols // self.group_size if self.granularity is Granularity.GROUP else 1
        self.register_buffer("qweight", torch.zeros(rows, cols, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(r, g, dtype=SCALE_DTYPES[scale_dtype]))
        self.register_buffer("zero", None if symmetric else torch.zeros(r, g, dtype=torch.uint8))
        if bits < 8:
            set_codec(self, "qweight", [{"codec": "bitpack", "bits": bits}])
            if not symmetric:
                set_codec(self, "zero", [{"codec": "bitpack", "bits": bits}])
        self._cache = _DecodeCache()

    def _load_quantized(self, qw: QuantizedWeight) -> None:
        self.qweight.copy_(qw.codes)
        self.scale.copy_(qw.scale.reshape(self.scale.shape))
        if self.zero is not None:
            if qw.zero is None:
                raise ValueError("asymmetric layer needs zero points")
            self.zero.copy_(qw.zero.reshape(self.zero.shape))

    def _codes_spec(self) -> dict:
        return {"bits": self.bits, "symmetric": self.symmetric, "granularity": self.granularity.value,
                "group_size": self.group_size, "scale_dtype": self.scale_dtype}

    @staticmethod
    def _codes_args(spec: dict) -> dict:
        gran = spec["granularity"]
        if gran not in {g.value for g in Granularity}:
            raise ValueError(f"granularity {gran!r} is unknown")
        return {"bits": spec["bits"], "symmetric": _flag(spec, "symmetric"), "granularity": gran,
                "group_size": _size(spec, "group_size"), "scale_dtype": spec["scale_dtype"]}

    def _codes_repr(self) -> str:
        gran = f"group_size={self.group_size}" if self.granularity is Granularity.GROUP \
            else f"per-{self.granularity.value}"
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"bits={self.bits}, {kind}, {gran}, scales={self.scale_dtype}"

    def _decode_all(self) -> torch.Tensor:
        if current_mode() == "compact":  # keep no decoded copy: decode on every call
            self._cache.value = None
            return self._decode_uncached()
        return self._cache.get(self, ("qweight", "scale", "zero"), self._decode_uncached)

    def runtime_state(self) -> dict:
        """Whether the decoded weight is kept, and the bytes it holds."""
        held = self._cache.nbytes()
        return {"choices": {"all": "dense" if held else "decode per call"}, "cache_bytes": held}

    def _decode_uncached(self) -> torch.Tensor:
        cg = group_view(self.qweight, self.granularity, self.group_size)
        return dequantize_groups(cg, self.scale.float(), self.zero, self.bits).reshape(self.qweight.shape)


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
        if x.dtype is torch.float32 and self._may_choose(x):
            x2 = x.reshape(-1, self.in_features)
            choice = self.__dict__.get("_kernel_choice") or self._new_choice()
            y = choice.run(x2, lambda: self._reference(x2))
            return y.reshape(*x.shape[:-1], self.out_features)
        w = self._decode_all()
        bias = self.bias
        if x.dtype != w.dtype:
            w, bias = w.to(x.dtype), None if bias is None else bias.to(x.dtype)
        return F.linear(x, w, bias)

    def _may_choose(self, x: torch.Tensor) -> bool:
        """Whether this call goes through the kernel choice: auto mode, no gradient wanted, a CPU
        layer that MatMulNBits can run (big enough to gain; `slimkit.nn.nbits`)."""
        if current_mode() != "auto" or x.numel() == 0 or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None and self.bias.requires_grad)):
            return False
        ok = self.__dict__.get("_nbits_ok")
        if ok is None:
            group = self.in_features // self.scale.shape[1]
            ok = self.__dict__["_nbits_ok"] = nbits.supports(self.out_features, self.in_features, self.bits, group)
        return ok

    def _new_choice(self) -> KernelChoice:
        kind = ("QuantLinear", self.in_features, self.out_features, self.bits, self.symmetric,
                self.granularity.value, self.group_size, self.bias is not None)
        candidates = {"dense": self._dense, "nbits": self._nbits}
        choice = self.__dict__["_kernel_choice"] = KernelChoice(
            kind, candidates, lean=("nbits",), decoded=("dense",), release=self._release)
        return choice

    def _dense(self, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(x2, self._decode_all(), self.bias)

    def _nbits(self, x2: torch.Tensor) -> torch.Tensor:
        """MatMulNBits on the codes (`slimkit.nn.nbits`): bits/8 bytes per weight read, activations
        quantized to int8 per block of inputs."""
        cache = self.__dict__.get("_nbits_cache") or self.__dict__.setdefault("_nbits_cache", _DecodeCache())
        kernel = cache.get(self, ("qweight", "scale", "zero", "bias"), lambda: nbits.NBitsMatMul(
            self.qweight, self.scale, self.zero, self.bits, self.bias))
        return kernel(x2)

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
        if "nbits" not in in_use and self.__dict__.get("_nbits_cache") is not None:
            self.__dict__["_nbits_cache"].value = None

    def runtime_state(self) -> dict:
        """What this layer runs per shape bucket (or "all" when it always decodes), and its cache bytes."""
        state = super().runtime_state()
        kernel = self.__dict__.get("_nbits_cache")
        if kernel is not None and kernel.value is not None:
            state["cache_bytes"] += kernel.value.nbytes
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
