"""Decoding the tensors of a .slim file, with every size checked before any large allocation.

`slimkit.io.artifact.load` and `slimkit.io.lazy.LazyStateDict` both decode through here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

from slimkit.core.errors import SlimFormatError
from slimkit.io.codecs import decode_chain
from slimkit.io.layout import StoredArrays, manifest_json
from slimkit.io.manifest import Manifest, TensorEntry, parse_manifest
from slimkit.io.safetensors_file import SafetensorsReader

SIDE_SEP = "::"
MAX_EXPANSION = 4096  # decoded bytes per stored byte, at most (1-bit packing of fp32 is 32)
MAX_TOTAL_EXPANSION = 256  # all tensors together, decoded bytes per byte of the file (plus 64 MiB)


def decoded_budget(file_size: int) -> int:
    """The most bytes all decoded tensors of a `file_size`-byte .slim file may take together: without
    it, thousands of tiny tensors each within its own bound could still expand a file 1000x."""
    return MAX_TOTAL_EXPANSION * file_size + (1 << 26)


_BASE_BUDGET: ContextVar[int | None] = ContextVar("slimkit_base_budget", default=None)


@contextmanager
def base_budget(nbytes: int) -> Iterator[None]:
    """While loading a file: the most bytes the architecture its manifest names may take
    (`decoded_budget` of the file's real size). Base builders read it with `current_base_budget`
    and refuse a config that describes more, before allocating anything.

    >>> with base_budget(decoded_budget(os.path.getsize(path))):
    ...     net = build_base(manifest.base, None, manifest)
    """
    token = _BASE_BUDGET.set(nbytes)
    try:
        yield
    finally:
        _BASE_BUDGET.reset(token)


def current_base_budget() -> int | None:
    """The byte budget of the architecture being built (`base_budget`), or None outside a load."""
    return _BASE_BUDGET.get()


def _to_torch(arr: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(arr, copy=True))
    if dtype == "bfloat16":
        return tensor.view(torch.bfloat16)
    return tensor


def _read_manifest(reader: SafetensorsReader) -> Manifest:
    return parse_manifest(manifest_json(reader), str(reader.path))


def group_arrays(reader: StoredArrays, manifest: Manifest, where: str) -> dict[str, dict[str, str]]:
    """Tensor name -> {"data" or side name: stored array key}; every stored array must belong to one."""
    by_tensor: dict[str, dict[str, str]] = {k: {} for k in manifest.tensors}
    for key in reader.keys():
        name, _, side = key.partition(SIDE_SEP)
        if name not in by_tensor:
            raise SlimFormatError(f"{where}: stored array {key!r} belongs to no manifest tensor")
        by_tensor[name][side or "data"] = key
    return by_tensor


def decode_tensor(reader: StoredArrays, keys: dict[str, str], name: str, entry: TensorEntry, where: str,
                  size: int) -> torch.Tensor:
    """Decode one tensor (`keys` from `group_arrays`), checking sizes before any large allocation."""
    if "data" not in keys:
        raise SlimFormatError(f"{where}: tensor {name!r} has no stored data")
    if entry.dtype not in _DTYPES:
        raise SlimFormatError(f"{where}: tensor {name!r} has unsupported dtype {entry.dtype!r}")
    stored_bytes = sum(reader.nbytes(k) for k in keys.values())
    decoded_bytes = math.prod(entry.shape) * _DTYPES[entry.dtype]
    limit = min(MAX_EXPANSION * stored_bytes + 4096, 64 * size + 2**26)
    if decoded_bytes > limit:
        raise SlimFormatError(f"{where}: tensor {name!r} claims {decoded_bytes} bytes from "
                              f"{stored_bytes} stored bytes")
    try:
        arr = decode_chain({k: reader.get(v) for k, v in keys.items()}, entry.chain, max_bytes=limit)
    except SlimFormatError as exc:
        raise SlimFormatError(f"{where}: tensor {name!r}: {exc}") from None
    if list(arr.shape) != entry.shape:
        raise SlimFormatError(f"{where}: tensor {name!r} decodes to shape {list(arr.shape)}, "
                              f"manifest says {entry.shape}")
    if arr.dtype.kind not in "biuf" or arr.dtype.itemsize != _DTYPES[entry.dtype]:
        raise SlimFormatError(f"{where}: tensor {name!r} decodes to {arr.dtype}, manifest says {entry.dtype}")
    return _to_torch(arr, entry.dtype)


def _decode_all(file: SafetensorsReader, manifest: Manifest) -> dict[str, torch.Tensor]:
    where = str(file.path)
    reader = StoredArrays(file, manifest)
    by_tensor = group_arrays(reader, manifest, where)
    size = file.path.stat().st_size
    claimed = sum(math.prod(e.shape) * _DTYPES.get(e.dtype, 0) for e in manifest.tensors.values())
    if claimed > decoded_budget(size):
        raise SlimFormatError(f"{where}: {len(manifest.tensors)} tensors claim {claimed} decoded bytes in all, "
                              f"more than {decoded_budget(size)} for a file of {size} bytes")
    out = {name: decode_tensor(reader, by_tensor[name], name, entry, where, size)
           for name, entry in manifest.tensors.items()}
    for key, target in manifest.aliases.items():
        out[key] = out[target]
    return out


_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1,
           "int16": 2, "int32": 4, "int64": 8, "bool": 1, "uint16": 2, "uint32": 4}
