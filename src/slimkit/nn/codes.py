"""The stored layout every weight-only quantized layer shares (`QuantLinear`, `QuantEmbedding`,
`QuantConv`): uint8 codes, a scale and an optional zero point per tensor, channel or group, and a
decoded copy of the weight kept while those buffers are unchanged (`_DecodeCache`).

>>> cache = _DecodeCache()
>>> w = cache.get(layer, ("qweight", "scale", "zero"), layer._decode_uncached)   # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.torch_utils import version_of
from slimkit.io.artifact import set_codec
from slimkit.nn.compute_dtype import SCALE_DTYPES
from slimkit.nn.kernels import current_mode
from slimkit.nn.quant_math import Granularity, QuantizedWeight, check_bits, check_group, group_view
from slimkit.nn.quant_math import dequantize as dequantize_groups


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
               *[(id(t), version_of(t)) for t in tensors if t is not None])
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
