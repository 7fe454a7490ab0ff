"""Codecs: reversible (or declared-lossy) transforms from one array to stored arrays.

A tensor is stored through a *chain* of codecs. Each stage takes the current array ("data"),
returns the array handed to the next stage plus side arrays (scales, codebooks, ...) and the
JSON parameters needed to decode. Method issues register more codecs with `@register_codec`.

>>> chain = [{"codec": "bitpack", "bits": 4}]
>>> stored, params = encode_chain(np.arange(16, dtype=np.uint8) % 16, chain)
>>> decode_chain(stored, params).tolist()[:4]
[0, 1, 2, 3]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.manifest import MAX_DIM, MAX_RANK

CODECS: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec available under `cls.name`."""
    CODECS[cls.name] = cls
    return cls


class Codec(ABC):
    """One stage of a chain. Subclasses are stateless; options arrive as keyword parameters."""

    name: ClassVar[str]

    @abstractmethod
    def encode(self, data: np.ndarray, **options: Any) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        """Return (next data, side arrays, JSON params needed by `decode`)."""

    @abstractmethod
    def decode(self, data: np.ndarray, side: dict[str, np.ndarray], params: dict) -> np.ndarray:
        """Invert `encode`. Must call `check` helpers before allocating anything large."""

    def side_keys(self, params: dict) -> tuple[str, ...]:
        """Names of the side arrays this stage stored (validated before decoding)."""
        return ()


def _shape(params: dict, what: str) -> tuple[int, ...]:
    shape = params.get("shape")
    if not _valid_shape(shape):
        raise SlimFormatError(f"{what}: codec parameter 'shape' must be a list of at most {MAX_RANK} ints "
                              f"in 0..{MAX_DIM}")
    return tuple(shape)


def _valid_shape(shape: object) -> bool:
    """A list of at most MAX_RANK ints in 0..MAX_DIM (so its product is a small number)."""
    return isinstance(shape, list) and len(shape) <= MAX_RANK and \
        all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)


# the dtype names a codec stage may give: numpy's canonical names of native numbers and bool ("<f4",
# ">f4", "f" or "single" are refused: a byte order other than the machine's cannot become a torch tensor)
DTYPE_NAMES = frozenset({"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                         "float16", "float32", "float64"})


def _dtype(params: dict, what: str) -> np.dtype:
    """The numeric (or bool) numpy dtype named by `params["dtype"]` (one of `DTYPE_NAMES`)."""
    name = params.get("dtype")
    if not isinstance(name, str) or name not in DTYPE_NAMES:
        raise SlimFormatError(f"{what}: unknown or non-numeric dtype {str(name)[:40]!r}")
    return np.dtype(name)


@register_codec
class BitPack(Codec):
    """Unsigned integers in [0, 2**bits) packed densely, `bits` in 1..8 (4-bit = half a byte each)."""

    name = "bitpack"

    def encode(self, data, bits: int = 8, **_):
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise SlimError(f"bitpack: bits must be an int in 1..8, got {bits!r}")
        flat = np.array(data, order="C", copy=None).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
            raise SlimError(f"bitpack: values must lie in [0, {2**bits}) for {bits} bits")
        packed = pack_bits(flat.astype(np.uint8), bits)
        return packed, {}, {"bits": bits, "shape": list(data.shape), "dtype": str(data.dtype)}

    def decode(self, data, side, params):
        bits = params.get("bits")
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise SlimFormatError(f"bitpack: bits {bits!r} outside 1..8")
        shape = _shape(params, "bitpack")
        count = math.prod(shape)
        if data.dtype != np.uint8 or data.size != (count * bits + 7) // 8:
            raise SlimFormatError(f"bitpack: {data.size} bytes cannot hold {count} values of {bits} bits")
        return unpack_bits(data, bits, count).astype(_dtype(params, "bitpack")).reshape(shape)


@register_codec
class Cast(Codec):
    """Store in a narrower float type (e.g. float16); decoding casts back. Lossy unless already exact."""

    name = "cast"

    def encode(self, data, to: str = "float16", **_):
        return data.astype(np.dtype(to)), {}, {"shape": list(data.shape), "dtype": str(data.dtype)}

    def decode(self, data, side, params):
        shape = _shape(params, "cast")
        if data.size != math.prod(shape):
            raise SlimFormatError("cast: stored element count does not match the declared shape")
        return data.astype(_dtype(params, "cast")).reshape(shape)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 values < 2**bits into a little-endian bit stream of ceil(n*bits/8) bytes."""
    if bits == 8:
        return values.astype(np.uint8, copy=True)
    as_bits = np.unpackbits(values.reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    return np.packbits(as_bits.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`."""
    if bits == 8:
        return packed[:count].astype(np.uint8, copy=True)
    as_bits = np.unpackbits(packed, bitorder="little", count=count * bits).reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (as_bits.astype(np.uint16) @ weights).astype(np.uint8)


def get_codec(name: object) -> Codec:
    if not isinstance(name, str) or name not in CODECS:
        raise SlimFormatError(f"unknown codec {name!r} (known: {', '.join(sorted(CODECS))})")
    return CODECS[name]()


def encode_chain(array: np.ndarray, chain: list[dict]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Run `array` through `chain` (a list of {"codec": name, **options}).

    Returns the stored arrays ("data" and "<stage>.<key>" side arrays) and per-stage params.
    """
    stored: dict[str, np.ndarray] = {}
    stages: list[dict] = []
    data = array
    for i, stage in enumerate(chain):
        options = {k: v for k, v in stage.items() if k != "codec"}
        codec = CODECS.get(stage.get("codec", ""))
        if codec is None:
            raise SlimError(f"unknown codec {stage.get('codec')!r} (known: {', '.join(sorted(CODECS))})")
        data, side, params = codec().encode(data, **options)
        for key, value in side.items():
            stored[f"{i}.{key}"] = np.array(value, order="C", copy=None)
        stages.append({"codec": codec.name, **params, **({"side": sorted(side)} if side else {})})
    stored["data"] = np.array(data, order="C", copy=None)
    return stored, stages


DECODE_ERRORS = (ValueError, TypeError, IndexError, KeyError, ArithmeticError)


def _declared_bytes(params: dict) -> int:
    """Bytes a stage says it decodes to (its "shape" x "dtype", 1 byte per item if no dtype); 0 if unsaid."""
    shape = params.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return 0
    if not _valid_shape(shape):
        raise SlimFormatError(f"codec parameter 'shape' must be a list of at most {MAX_RANK} ints in 0..{MAX_DIM}")
    try:
        itemsize = np.dtype(str(params["dtype"])).itemsize if "dtype" in params else 1
    except (TypeError, ValueError):
        itemsize = 1
    return math.prod(shape) * itemsize


def decode_chain(stored: dict[str, np.ndarray], stages: list[dict], max_bytes: int | None = None) -> np.ndarray:
    """Invert `encode_chain`. Raises SlimFormatError on any inconsistency.

    With `max_bytes`, no stage may declare or produce more bytes than that (the intermediate arrays
    of a chain from a file are bounded, not only its final tensor).
    """
    data = stored["data"]
    for i in reversed(range(len(stages))):
        params = stages[i]
        if not isinstance(params, dict):
            raise SlimFormatError(f"codec stage {i} is not an object")
        codec = get_codec(params.get("codec"))
        if max_bytes is not None and _declared_bytes(params) > max_bytes:
            raise SlimFormatError(f"codec {codec.name} (stage {i}) declares {_declared_bytes(params)} decoded "
                                  f"bytes, more than the {max_bytes} its stored bytes allow")
        side_names = params.get("side", [])
        if not isinstance(side_names, list):
            raise SlimFormatError(f"codec stage {i}: 'side' must be a list")
        missing = [k for k in side_names if f"{i}.{k}" not in stored]
        if missing:
            raise SlimFormatError(f"codec {codec.name}: missing side arrays {missing}")
        side = {k: stored[f"{i}.{k}"] for k in side_names}
        try:
            data = codec.decode(data, side, params)
        except SlimFormatError:
            raise
        except DECODE_ERRORS as exc:  # numpy refusing a malformed stage: a format error, in one line
            text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise SlimFormatError(f"codec {codec.name} (stage {i}) cannot decode: "
                                  f"{type(exc).__name__}: {text}") from None
        if max_bytes is not None and np.asarray(data).nbytes > max_bytes:
            raise SlimFormatError(f"codec {codec.name} (stage {i}) decoded {np.asarray(data).nbytes} bytes, "
                                  f"more than the {max_bytes} its stored bytes allow")
    return data
