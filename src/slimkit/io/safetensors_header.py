"""The safetensors header: the dtype table, writing the JSON header, and reading it back with every
entry checked before anything is allocated.

`read_header` bounds the header's length by the real file size (`metadata_budget`), counts its
entries before parsing (at most MAX_ENTRIES), then checks each entry's dtype, shape and byte range
(`check_entry`: inside the data section, size = elements x itemsize) and that no two overlap, so a
truncated or lying file is refused with `SlimFormatError` instead of a huge allocation.

>>> with open("model.safetensors", "rb") as fh:
...     entries, metadata, data_start = read_header(fh, os.path.getsize("model.safetensors"), "model")
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from slimkit.core.errors import SlimFormatError
from slimkit.core.text import clean
from slimkit.io.manifest import MAX_RANK

MAX_HEADER = 64 * 1024 * 1024
MAX_ENTRIES = 1 << 19   # arrays in one file: a whole 30B mixture-of-experts model in slimkit's codecs holds ~60k

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
    "U64": np.uint64, "BOOL": np.bool_, "BF16": np.uint16,   # bfloat16: its bit patterns
}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}   # what numpy arrays are written as
TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
               "U64": "uint64", "BOOL": "bool"}   # safetensors dtype code -> torch dtype name


def header_json(metadata: dict[str, str], entries: Iterable[tuple[str, str, list[int], int]]) -> bytes:
    """The JSON header of a safetensors file (without its 8-byte length) whose data section holds
    `entries` (name, dtype code, shape, byte count) back to back in this order; padded with spaces
    to a multiple of 8 bytes, so that the data section starts aligned."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, code, shape, nbytes in entries:
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


METADATA_FLOOR = 4 << 20   # header or manifest text any file may have


def metadata_budget(size: int) -> int:
    """The longest header (or manifest text, once inflated) a file of `size` bytes may have: 4 MiB,
    or 1/16 of the file, at most MAX_HEADER. Parsed JSON takes up to ~30x its text in Python objects,
    so this keeps a file's metadata within its memory budget (max(500 MB, 4x the file)); a real
    manifest takes ~250 bytes per tensor (1,000 tensors: 250 KB)."""
    return min(MAX_HEADER, max(METADATA_FLOOR, size // 16))


def read_header(fh, size: int, name: str) -> tuple[dict, dict[str, str], int]:
    """Parse and validate the header; return (tensor entries, metadata, data start)."""
    if size < 8:
        raise SlimFormatError(f"{name}: file is {size} bytes, too short to be safetensors")
    n = int.from_bytes(fh.read(8), "little")
    if n < 2 or n > size - 8:
        raise SlimFormatError(f"{name}: header length {n} does not fit the file size {size}")
    if n > metadata_budget(size):
        raise SlimFormatError(f"{name}: header length {n} is more than the {metadata_budget(size)} bytes allowed "
                              f"for a file of {size} bytes")
    raw = fh.read(n)
    if raw.count(b'"data_offsets"') > MAX_ENTRIES:   # each entry has one (an escaped quote cannot match)
        raise SlimFormatError(f"{name}: header lists more than {MAX_ENTRIES} tensors")
    with _gc_paused():   # a million tiny entries: the collector's passes over them took half the time
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError) as exc:   # bad UTF-8 or JSON, an int of > 4300 digits
            raise SlimFormatError(f"{name}: header is not valid JSON ({exc.__class__.__name__})") from None
        if not isinstance(header, dict):
            raise SlimFormatError(f"{name}: header is not a JSON object")
        meta = header.pop("__metadata__", {}) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise SlimFormatError(f"{name}: __metadata__ must map strings to strings")
        data_len = size - 8 - n
        spans = []
        for key, entry in header.items():
            check_entry(key, entry, data_len, name)
            spans.append((*entry["data_offsets"], key))
        spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise SlimFormatError(f"{name}: tensors {a!r} and {b!r} overlap")
    return header, meta, 8 + n


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (parsed JSON holds no cycles); as it was after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_ITEMSIZES = {code: np.dtype(t).itemsize for code, t in _DTYPES.items()}


def check_entry(key: str, entry: object, data_len: int, name: str) -> None:
    """One header entry, in plain loops: a 64 MiB header (the most `metadata_budget` allows) holds
    over a million entries, and this runs once for each (a million zero-size tensors: ~10 s of CPU
    in all with generator expressions and np.dtype per entry; issue 22)."""
    if type(entry) is not dict or entry.keys() != _ENTRY_KEYS:
        raise SlimFormatError(f"{name}: tensor {key!r} has a malformed header entry")
    dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
    itemsize = _ITEMSIZES.get(dtype) if type(dtype) is str else None
    if itemsize is None:
        raise SlimFormatError(f"{name}: tensor {key!r} has unsupported dtype {dtype!r}")
    count = 1
    if type(shape) is list and len(shape) <= MAX_RANK:
        for d in shape:
            if type(d) is not int or not 0 <= d < 2**40:
                count = -1
                break
            count *= d
    if type(shape) is not list or len(shape) > MAX_RANK or count < 0:
        raise SlimFormatError(f"{name}: tensor {key!r} has an invalid shape {clean(shape, 80)}")
    if (type(offs) is not list or len(offs) != 2 or type(offs[0]) is not int or type(offs[1]) is not int
            or not 0 <= offs[0] <= offs[1] <= data_len):
        raise SlimFormatError(f"{name}: tensor {key!r} lies outside the file (offsets {clean(offs, 80)})")
    if offs[1] - offs[0] != count * itemsize:
        raise SlimFormatError(f"{name}: tensor {key!r} byte count does not match its shape and dtype")
