"""How a .slim file lays its arrays out inside safetensors.

- *named* layout (large models): one safetensors tensor per stored array, named after its
  state-dict tensor (`fc1.weight`, side arrays `fc1.weight::0.codebook`); the manifest is plain
  JSON in `__metadata__["slimkit"]`, readable by any safetensors tool.
- *packed* layout (artifacts whose arrays total at most `PACK_LIMIT` bytes): all arrays are
  concatenated into one uint8 tensor `payload`, the manifest's `packed` index gives each array's
  dtype, shape and offset, and the manifest is stored raw-deflate-compressed with a fixed preset
  dictionary (`ZDICT`, the manifest's usual vocabulary) as the payload's last N bytes, with
  `__metadata__["slimkit.zb"] = "N"`. At tens of kilobytes, per-array headers and JSON escaping
  were half of a Deep-Compression file; packing removes that overhead. (Files from before the
  dictionary hold the manifest zlib-compressed, base64, in `__metadata__["slimkit.z"]`; they
  still load.)

Both are validated the same way before anything is allocated.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib

import numpy as np

from slimkit.core.errors import SlimFormatError
from slimkit.io.manifest import METADATA_KEY, Manifest
from slimkit.io.safetensors_file import _CODES, _DTYPES, SafetensorsReader, check_entry, serialize

PACK_LIMIT = 1 << 20
PAYLOAD = "payload"
COMPRESSED_KEY = f"{METADATA_KEY}.z"
TAIL_KEY = f"{METADATA_KEY}.zb"
# The preset dictionary of the tail manifest: frozen (changing it breaks every packed file).
ZDICT = (
    b'{"format":"slimkit","version":1,"base":{"kind":"zoo","name":"lenet-300-100"},"kind":"user"'
    b'"kind":"hf","edits":[{"op":"replace","module":"fc1","spec":{"type":"Int8Linear","in":64,"out":300,'
    b'"bias":true}},{"op":"shrink_out","module":"fc2","keep":[{"op":"factorize","rank":'
    b'"info":{"recipe":"deep-compression","source":"builtin:lenet-300-100"},"aliases":{'
    b'"packed":{"fc1.weight":["U8",[300,64],0],"fc1.bias::0.codebook":["F16",[16],'
    b'"tensors":{"fc1.qweight":{"dtype":"int8","shape":[300,64],"chain":[]},"fc1.scale":{"dtype":'
    b'"float32","shape":[300],"chain":[{"codec":"bitpack","bits":4,"dtype":"uint8"},'
    b'{"codec":"palette","bits":4,"side":["codebook"]},{"codec":"entropy","shape":[1577],"coder":"ans"}]},'
    b'"fc2.weight":{"dtype":"float32","shape":[100,300],"chain":[{"codec":"sparse","shape":[100,300],'
    b'"dtype":"float32","nnz":753,"index":"mask","side":["mask"]},{"codec":"sparse","shape":[300,64],'
    b'"dtype":"float32","nnz":1577,"index":"gaps","gap_bits":4,"symbols":2206,"gap_coder":"huffman",'
    b'"side":["gaps"]},{"codec":"cast","to":"float16","shape":[1577],"dtype":"float32"},'
    b'{"codec":"palette","bits":4,"side":["codebook"]},{"codec":"entropy","shape":[300],"coder":"huffman"}]}'
)
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
    packed = manifest.model_copy(update={"packed": index})
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=ZDICT)
    tail = deflate.compress(packed.to_json().encode()) + deflate.flush()
    payload = np.frombuffer(b"".join(parts) + tail, dtype=np.uint8)
    return serialize({PAYLOAD: payload}, {TAIL_KEY: str(len(tail))})


def _tail_length(reader: SafetensorsReader) -> int:
    """N of a file whose manifest is the payload's last N bytes (0 for other layouts)."""
    text = reader.metadata.get(TAIL_KEY)
    if text is None:
        return 0
    if PAYLOAD not in reader.keys() or reader.entries[PAYLOAD]["dtype"] != "U8":
        raise SlimFormatError(f"{reader.path}: '{TAIL_KEY}' without a uint8 '{PAYLOAD}' tensor")
    if not (isinstance(text, str) and text.isdigit() and 0 < int(text) <= reader.nbytes(PAYLOAD)):
        raise SlimFormatError(f"{reader.path}: manifest length {text!r} does not fit the payload")
    return int(text)


def manifest_limit(compressed: int) -> int:
    """The longest manifest text `compressed` bytes may inflate to. Real manifests compress 5-8x;
    a deflate bomb (1000x) of tiny JSON objects would otherwise cost ~35 bytes of RAM per byte."""
    return min(MAX_MANIFEST, (1 << 20) + 64 * compressed)


def _inflate(raw: bytes, where: object, inflater) -> str:
    try:
        text = inflater.decompress(raw, manifest_limit(len(raw)))
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise SlimFormatError(f"{where}: compressed manifest is truncated or too large")
        return text.decode()
    except (zlib.error, UnicodeDecodeError) as exc:
        raise SlimFormatError(f"{where}: compressed manifest is corrupt ({exc.__class__.__name__})") from None


def manifest_json(reader: SafetensorsReader) -> str:
    """The manifest text of an open file, decompressed if needed; SlimFormatError if absent."""
    meta = reader.metadata
    if METADATA_KEY in meta:
        return meta[METADATA_KEY]
    tail = _tail_length(reader)
    if tail:
        raw = reader.get(PAYLOAD).reshape(-1)[-tail:].tobytes()
        return _inflate(raw, reader.path, zlib.decompressobj(-15, zdict=ZDICT))
    if COMPRESSED_KEY not in meta:
        raise SlimFormatError(f"{reader.path}: not a .slim file (safetensors without a slimkit manifest)")
    try:
        raw = base64.b64decode(meta[COMPRESSED_KEY], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SlimFormatError(f"{reader.path}: compressed manifest is corrupt ({exc.__class__.__name__})") from None
    return _inflate(raw, reader.path, zlib.decompressobj())


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
        size = reader.nbytes(PAYLOAD) - _tail_length(reader)  # arrays never reach into the manifest
        self._payload = reader.get(PAYLOAD).reshape(-1)
        self._index = {}
        spans = []
        for name, item in manifest.packed.items():
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], int)):
                raise SlimFormatError(f"{where}: packed entry {name!r} is malformed")
            code, shape, offset = item
            nbytes = math.prod(shape) * np.dtype(_DTYPES[code]).itemsize if (
                isinstance(code, str) and code in _DTYPES and isinstance(shape, list)
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
