"""How a .slim file lays its arrays out inside safetensors.

- *named* layout (large models): one safetensors tensor per stored array, named after its
  state-dict tensor (`fc1.weight`, side arrays `fc1.weight::0.codebook`); the manifest is plain
  JSON in `__metadata__["slimkit"]`, readable by any safetensors tool.
- *packed* layout (artifacts whose arrays total at most `PACK_LIMIT` bytes): all arrays are
  concatenated into one uint8 tensor `payload`, the manifest's `packed` index gives each array's
  dtype, shape and offset, and the manifest is stored zlib-compressed (base64) in
  `__metadata__["slimkit.z"]`. At tens of kilobytes, per-array headers and JSON escaping were
  half of a Deep-Compression file; packing removes that overhead.

Both are validated the same way before anything is allocated.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib

import numpy as np

from slimkit.errors import SlimFormatError
from slimkit.io.manifest import METADATA_KEY, Manifest
from slimkit.io.safetensors_file import _CODES, _DTYPES, SafetensorsReader, check_entry, serialize

PACK_LIMIT = 1 << 20
PAYLOAD = "payload"
COMPRESSED_KEY = f"{METADATA_KEY}.z"
MAX_MANIFEST = 64 * 1024 * 1024


def file_chunks(arrays: dict[str, np.ndarray], manifest: Manifest) -> list:
    """The bytes of the .slim file holding `arrays` and `manifest` (layout chosen by size)."""
    total = sum(a.nbytes for a in arrays.values())
    if total > PACK_LIMIT:
        return serialize(arrays, {METADATA_KEY: manifest.to_json()})
    index: dict[str, list] = {}
    parts: list[bytes] = []
    offset = 0
    for name in sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k)):  # aligned, no padding
        arr = np.asarray(arrays[name])
        index[name] = [_CODES[arr.dtype], list(arr.shape), offset]
        parts.append(np.array(arr, order="C").tobytes())
        offset += arr.nbytes
    payload = np.frombuffer(b"".join(parts), dtype=np.uint8)
    packed = manifest.model_copy(update={"packed": index})
    blob = base64.b64encode(zlib.compress(packed.to_json().encode(), 9)).decode()
    return serialize({PAYLOAD: payload}, {COMPRESSED_KEY: blob})


def manifest_json(reader: SafetensorsReader) -> str:
    """The manifest text of an open file, decompressed if needed; SlimFormatError if absent."""
    meta = reader.metadata
    if METADATA_KEY in meta:
        return meta[METADATA_KEY]
    if COMPRESSED_KEY not in meta:
        raise SlimFormatError(f"{reader.path}: not a .slim file (safetensors without a slimkit manifest)")
    try:
        raw = base64.b64decode(meta[COMPRESSED_KEY], validate=True)
        inflater = zlib.decompressobj()
        text = inflater.decompress(raw, MAX_MANIFEST)
        if inflater.unconsumed_tail or not inflater.eof:
            raise SlimFormatError(f"{reader.path}: compressed manifest is truncated or too large")
        return text.decode()
    except (binascii.Error, zlib.error, UnicodeDecodeError) as exc:
        raise SlimFormatError(f"{reader.path}: compressed manifest is corrupt ({exc.__class__.__name__})") from None


class StoredArrays:
    """The stored arrays of an open .slim file, whichever layout it uses."""

    def __init__(self, reader: SafetensorsReader, manifest: Manifest):
        self.reader = reader
        where = str(reader.path)
        if not manifest.packed:
            self._index = None
            return
        if set(reader.keys()) != {PAYLOAD} or reader.entries[PAYLOAD]["dtype"] != "U8":
            raise SlimFormatError(f"{where}: a packed .slim file must hold exactly one uint8 '{PAYLOAD}' tensor")
        size = reader.nbytes(PAYLOAD)
        self._payload = reader.get(PAYLOAD).reshape(-1)
        self._index = {}
        spans = []
        for name, item in manifest.packed.items():
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], int)):
                raise SlimFormatError(f"{where}: packed entry {name!r} is malformed")
            code, shape, offset = item
            nbytes = math.prod(shape) * np.dtype(_DTYPES[code]).itemsize if (
                code in _DTYPES and isinstance(shape, list)
                and all(type(d) is int and d >= 0 for d in shape)) else -1
            entry = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + max(nbytes, 0)]}
            check_entry(name, entry, size, where)
            if offset % np.dtype(_DTYPES[code]).itemsize:
                raise SlimFormatError(f"{where}: packed entry {name!r} is misaligned")
            self._index[name] = entry
            spans.append((offset, offset + nbytes, name))
        spans.sort()
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:], strict=False):
            if begin < end:
                raise SlimFormatError(f"{where}: packed arrays {a!r} and {b!r} overlap")

    def keys(self) -> list[str]:
        return self.reader.keys() if self._index is None else list(self._index)

    def nbytes(self, key: str) -> int:
        if self._index is None:
            return self.reader.nbytes(key)
        begin, end = self._index[key]["data_offsets"]
        return end - begin

    def get(self, key: str) -> np.ndarray:
        if self._index is None:
            return self.reader.get(key)
        entry = self._index[key]
        begin, end = entry["data_offsets"]
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        return self._payload[begin:end].view(dtype).reshape(tuple(entry["shape"]))
