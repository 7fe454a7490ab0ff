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

Both are validated the same way before anything is allocated. There is one writer: `write_slim`
(used by `slimkit.io.artifact.save`) writes the packed layout in one piece and the named layout
through `SlimWriter`, which `slimkit.stream` also uses array by array for models that are never
whole in memory. `file_chunks` gives the bytes of either layout without writing (for sizes).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.manifest import MAX_DIM, MAX_RANK, METADATA_KEY, Manifest
from slimkit.io.safetensors_file import AtomicFile, SafetensorsReader, atomic_write, serialize
from slimkit.io.safetensors_header import _CODES, _DTYPES, check_entry, header_json, metadata_budget

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
COPY_CHUNK = 8 << 20   # bytes per copy while SlimWriter assembles its file


def file_chunks(arrays: dict[str, np.ndarray], manifest: Manifest) -> list:
    """The bytes of the .slim file holding `arrays` and `manifest` (layout chosen by size)."""
    total = sum(a.nbytes for a in arrays.values())
    if total > PACK_LIMIT:   # the named layout, byte for byte as `SlimWriter` writes it
        ordered = sorted(arrays.items(), key=lambda kv: -kv[1].dtype.itemsize)
        raw = header_json({METADATA_KEY: manifest.to_json()},
                          [(name, _CODES[a.dtype], list(a.shape), a.nbytes) for name, a in ordered])
        return [len(raw).to_bytes(8, "little") + raw,
                *(np.ascontiguousarray(a).reshape(-1).view(np.uint8) for _, a in ordered)]
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


def write_slim(path: str | os.PathLike, arrays: dict[str, np.ndarray], manifest: Manifest,
               overwrite: bool = True, verify: Callable[[Path], object] | None = None) -> int:
    """Write `arrays` and `manifest` as a .slim file at `path`, atomically; returns its size in bytes.
    `overwrite=False`: SlimError, and nothing written, if `path` exists when the file is complete.
    `verify(temporary path)` checks the finished file before it takes its name; if it raises,
    nothing is left (`AtomicFile.commit`).

    >>> write_slim("m.slim", {"fc.weight": np.zeros((4, 8), np.float32)}, manifest)
    """
    if sum(a.nbytes for a in arrays.values()) <= PACK_LIMIT:
        atomic_write(path, file_chunks(arrays, manifest), overwrite, verify)
        return Path(path).stat().st_size
    with SlimWriter(path, overwrite) as writer:
        writer.reserve([(name, arr.dtype, list(arr.shape)) for name, arr in arrays.items()], manifest)
        for name, arr in arrays.items():
            writer.add_array(name, arr)
        return writer.finish(manifest, verify)


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


def _inflate(raw: bytes, where: object, inflater, budget: int = MAX_MANIFEST) -> str:
    try:
        text = inflater.decompress(raw, min(budget, manifest_limit(len(raw))))
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise SlimFormatError(f"{where}: compressed manifest is truncated or too large")
        return text.decode()
    except (zlib.error, UnicodeDecodeError) as exc:
        raise SlimFormatError(f"{where}: compressed manifest is corrupt ({exc.__class__.__name__})") from None


def manifest_json(reader: SafetensorsReader) -> str:
    """The manifest text of an open file, decompressed if needed; SlimFormatError if absent."""
    meta = reader.metadata
    if METADATA_KEY in meta:   # inside the header, whose length `read_header` bounded
        return meta[METADATA_KEY]
    budget = metadata_budget(reader.path.stat().st_size)
    tail = _tail_length(reader)
    if tail:
        raw = reader.read(PAYLOAD, reader.nbytes(PAYLOAD) - tail)
        return _inflate(raw, reader.path, zlib.decompressobj(-15, zdict=ZDICT), budget)
    if COMPRESSED_KEY not in meta:
        raise SlimFormatError(f"{reader.path}: not a .slim file (safetensors without a slimkit manifest)")
    try:
        raw = base64.b64decode(meta[COMPRESSED_KEY], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SlimFormatError(f"{reader.path}: compressed manifest is corrupt ({exc.__class__.__name__})") from None
    return _inflate(raw, reader.path, zlib.decompressobj(), budget)


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
                isinstance(code, str) and code in _DTYPES and isinstance(shape, list) and len(shape) <= MAX_RANK
                and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)) else -1
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


@dataclass(frozen=True)
class _Array:
    name: str
    code: str
    shape: list[int]
    offset: int   # in the payload file
    nbytes: int
    itemsize: int


class SlimWriter:
    """A .slim file in the named layout, written array by array: memory stays at one chunk.

    A safetensors file starts with its header, which holds the manifest and every array's offsets,
    so `add` first appends the payloads to an anonymous temporary file beside the output; `finish`
    then writes header + payloads (grouped by item size, widest first, so every array is aligned
    and the data section has no holes) into an `AtomicFile`, which it renames over the output. An
    error or a kill at any point leaves no partial output; `abort` (or leaving the `with` block by
    an exception) removes the temporary files. `overwrite=False` never replaces an existing file
    (`AtomicFile`): SlimError at `finish` if one appeared meanwhile. `digests` holds each array's
    CRC-32 as written, for a reload check of the finished file (`slimkit.stream.verify`).

    When every array's size is known in advance (e.g. int8/int4 codes and raw copies, whose sizes
    follow from shapes), `reserve` writes the header first and `add` then writes each array at its
    final offset, so the payload is written once instead of twice.

    >>> with SlimWriter("ck.slim") as w:
    ...     w.add("fc.weight", np.dtype("uint8"), [4, 8], [codes_block_1, codes_block_2])
    ...     w.finish(manifest)
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = True):
        self.path = Path(path)
        self.overwrite = overwrite
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise SlimError(f"cannot write {self.path}: folder {folder} does not exist")
        try:   # unnamed where the OS allows (O_TMPFILE): nothing is left behind, even by kill -9
            self._payload = tempfile.TemporaryFile(prefix=f".{self.path.name}.", suffix=".payload", dir=folder)
        except OSError as exc:
            raise SlimError(f"cannot write {self.path}: {exc.strerror or exc.__class__.__name__}") from None
        self._arrays: list[_Array] = []
        self._names: set[str] = set()
        self._size = 0
        self.done = False
        self._reserved: dict[str, tuple[int, int]] | None = None   # name -> (file offset, bytes)
        self._final: AtomicFile | None = None                       # the output, once reserved
        self._manifest_json = ""
        self.digests: dict[str, int] = {}   # array name -> CRC-32 of its bytes as written (for a reload check)

    @property
    def payload_bytes(self) -> int:
        return self._size

    def add(self, name: str, dtype: np.dtype, shape: list[int], chunks: Iterable) -> int:
        """Append array `name` of `dtype` and `shape` from `chunks` (arrays or bytes, in order);
        returns its byte count. The chunks must add up to exactly shape x itemsize bytes."""
        dtype = np.dtype(dtype)
        if dtype not in _CODES:
            raise SlimError(f"cannot store array {name!r} of dtype {dtype}")
        if name in self._names:
            raise SlimError(f"array {name!r} written twice")
        expected = math.prod(shape) * dtype.itemsize
        if self._reserved is not None and self._reserved.get(name, (0, -1))[1] != expected:
            raise SlimError(f"array {name!r} ({list(shape)} of {dtype}) was not reserved")
        written, crc = 0, 0
        for chunk in chunks:
            view = memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
                              if isinstance(chunk, np.ndarray) else chunk).cast("B")
            if self._final is not None and self._reserved is not None:
                if view.nbytes > expected - written:
                    raise SlimError("an array is larger than the space reserved for it")
                self._final.pwrite(view, self._reserved[name][0] + written)
            else:
                self._payload.write(view)
            written += view.nbytes
            crc = zlib.crc32(view, crc)
        if written != expected:
            raise SlimError(f"array {name!r}: wrote {written} bytes, shape {shape} of {dtype} needs {expected}")
        self._arrays.append(_Array(name, _CODES[dtype], list(shape), self._size, written, dtype.itemsize))
        self._names.add(name)
        self.digests[name] = crc
        self._size += written
        return written

    def add_array(self, name: str, arr: np.ndarray) -> int:
        """Append one in-memory array."""
        arr = np.asarray(arr)
        return self.add(name, arr.dtype, list(arr.shape), [arr])

    def reserve(self, arrays: list[tuple[str, np.dtype, list[int]]], manifest: Manifest) -> None:
        """Write the header for exactly these arrays now; each `add` then writes at its final place."""
        planned = [_Array(n, _CODES[np.dtype(d)], list(s), 0, math.prod(s) * np.dtype(d).itemsize,
                          np.dtype(d).itemsize) for n, d, s in arrays]
        head, ordered = self.header(manifest, planned)
        self._final = AtomicFile(self.path, self.overwrite)
        self._manifest_json = manifest.to_json()
        self._final.write(head)
        offset, self._reserved = len(head), {}
        for a in ordered:
            self._reserved[a.name] = (offset, a.nbytes)
            offset += a.nbytes
        os.ftruncate(self._final.fd, offset)

    def header(self, manifest: Manifest, arrays: list[_Array] | None = None) -> tuple[bytes, list[_Array]]:
        """The header bytes (length prefix included) and the arrays in file order."""
        arrays = self._arrays if arrays is None else arrays
        ordered = sorted(arrays, key=lambda a: -a.itemsize)   # stable: encoding order within a width
        raw = header_json({METADATA_KEY: manifest.to_json()}, [(a.name, a.code, a.shape, a.nbytes) for a in ordered])
        return len(raw).to_bytes(8, "little") + raw, ordered

    def finish(self, manifest: Manifest, verify: Callable[[Path], object] | None = None) -> int:
        """Write the .slim file (header, then the payloads) atomically; returns its size in bytes.
        `verify`: see `AtomicFile.commit`."""
        if self._final is not None:
            return self._finish_reserved(manifest, verify)
        head, ordered = self.header(manifest)
        self._payload.flush()
        with AtomicFile(self.path, self.overwrite) as out:
            out.write(head)
            for a in ordered:
                _copy_range(self._payload.fileno(), out.fd, a.offset, a.nbytes)
            out.commit(verify)
        self.done = True
        self.close()
        return len(head) + self._size

    def _finish_reserved(self, manifest: Manifest, verify: Callable[[Path], object] | None = None) -> int:
        if self._final is None or self._reserved is None:
            raise RuntimeError("internal: finishing a reserved layout that was never reserved")
        missing = sorted(set(self._reserved) - self._names)
        if missing or manifest.to_json() != self._manifest_json:
            raise SlimError(f"cannot finish {self.path}: arrays {missing[:3]} not written or the manifest changed")
        size = self._final.size()
        self._final.commit(verify)
        self._final = None
        self.done = True
        self.close()
        return size

    def close(self) -> None:
        """Remove the temporary files (the output, if finished, stays)."""
        self._payload.close()
        if self._final is not None:
            self._final.discard()
            self._final = None

    abort = close

    def __enter__(self) -> SlimWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy_range(src: int, dst: int, offset: int, nbytes: int) -> None:
    """Copy bytes offset..offset+nbytes of file `src` to the end of file `dst`, in chunks."""
    end = offset + nbytes
    while offset < end:
        n = min(COPY_CHUNK, end - offset)
        if hasattr(os, "copy_file_range"):
            try:
                got = os.copy_file_range(src, dst, n, offset)
                if got > 0:
                    offset += got
                    continue
            except OSError:
                pass
        data = os.pread(src, n, offset)
        if not data:
            raise SlimError("payload file ended early while assembling the output")
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]
        offset += len(data)
