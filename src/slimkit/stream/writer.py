"""Write a .slim file incrementally: arrays are appended as they are encoded, the header last.

A safetensors file starts with its header, which holds the manifest and every array's offsets,
so the payloads are first appended to a hidden temporary file beside the output; `finish` then
writes header + payloads (grouped by item size, widest first, so every array is aligned and the
data section has no holes) into a second temporary file, fsyncs it and renames it over the output.
Memory stays at one chunk; an error or a kill at any point leaves no partial output, and `abort`
(or leaving the `with` block by an exception) removes the temporary files.

When every array's size is known in advance (int8/int4 and raw copies: sizes follow from shapes),
`reserve` writes the header first and `add` then writes each array at its final offset, so the
payload is written once instead of twice.

>>> with SlimWriter("ck.slim") as w:
...     w.add("fc.weight", np.dtype("uint8"), [4, 8], [codes_block_1, codes_block_2])
...     w.finish(manifest)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimkit.core.errors import SlimError
from slimkit.io.manifest import METADATA_KEY, Manifest
from slimkit.io.safetensors_file import _CODES

COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class _Array:
    name: str
    code: str
    shape: list[int]
    offset: int   # in the payload file
    nbytes: int
    itemsize: int


class SlimWriter:
    """Appends arrays to a payload file, then assembles the .slim atomically (see module doc)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise SlimError(f"cannot write {self.path}: folder {folder} does not exist")
        self.folder = folder
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".payload", dir=folder)
        self._payload_path = Path(tmp)
        self._payload = os.fdopen(fd, "w+b")
        self._arrays: list[_Array] = []
        self._names: set[str] = set()
        self._size = 0
        self.done = False
        self._reserved: dict[str, tuple[int, int]] | None = None   # name -> (file offset, bytes)
        self._final: tuple[int, str] | None = None                 # (fd, path) of the output's temp file
        self._manifest_json = ""

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
        written = 0
        for chunk in chunks:
            view = memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
                              if isinstance(chunk, np.ndarray) else chunk).cast("B")
            if self._final is not None and self._reserved is not None:
                _pwrite_all(self._final[0], view, self._reserved[name][0] + written, expected - written)
            else:
                self._payload.write(view)
            written += view.nbytes
        if written != expected:
            raise SlimError(f"array {name!r}: wrote {written} bytes, shape {shape} of {dtype} needs {expected}")
        self._arrays.append(_Array(name, _CODES[dtype], list(shape), self._size, written, dtype.itemsize))
        self._names.add(name)
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
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.folder)
        self._final = (fd, tmp)
        self._manifest_json = manifest.to_json()
        _pwrite_all(fd, memoryview(head), 0, len(head))
        offset, self._reserved = len(head), {}
        for a in ordered:
            self._reserved[a.name] = (offset, a.nbytes)
            offset += a.nbytes
        os.ftruncate(fd, offset)

    def header(self, manifest: Manifest, arrays: list[_Array] | None = None) -> tuple[bytes, list[_Array]]:
        """The header bytes (length prefix included) and the arrays in file order."""
        arrays = self._arrays if arrays is None else arrays
        ordered = sorted(arrays, key=lambda a: -a.itemsize)   # stable: encoding order within a width
        head: dict[str, object] = {"__metadata__": {METADATA_KEY: manifest.to_json()}}
        offset = 0
        for a in ordered:
            head[a.name] = {"dtype": a.code, "shape": a.shape, "data_offsets": [offset, offset + a.nbytes]}
            offset += a.nbytes
        raw = json.dumps(head, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return len(raw).to_bytes(8, "little") + raw, ordered

    def finish(self, manifest: Manifest) -> int:
        """Write the .slim file (header, then the payloads) atomically; returns its size in bytes."""
        if self._final is not None:
            return self._finish_reserved(manifest)
        head, ordered = self.header(manifest)
        self._payload.flush()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                out.flush()
                src = self._payload.fileno()
                for a in ordered:
                    _copy_range(src, out.fileno(), a.offset, a.nbytes)
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            _unlink(Path(tmp))
            raise
        self.done = True
        self.close()
        _fsync_dir(self.folder)
        return len(head) + self._size

    def _finish_reserved(self, manifest: Manifest) -> int:
        if self._final is None or self._reserved is None:
            raise RuntimeError("internal: finishing a reserved layout that was never reserved")
        missing = sorted(set(self._reserved) - self._names)
        if missing or manifest.to_json() != self._manifest_json:
            raise SlimError(f"cannot finish {self.path}: arrays {missing[:3]} not written or the manifest changed")
        fd, tmp = self._final
        size = os.fstat(fd).st_size
        os.fsync(fd)
        os.close(fd)
        self._final = None
        os.replace(tmp, self.path)
        self.done = True
        self.close()
        _fsync_dir(self.folder)
        return size

    def close(self) -> None:
        """Remove the temporary files (the output, if finished, stays)."""
        if not self._payload.closed:
            self._payload.close()
        _unlink(self._payload_path)
        if self._final is not None:
            os.close(self._final[0])
            _unlink(Path(self._final[1]))
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


def _pwrite_all(fd: int, view: memoryview, offset: int, room: int) -> None:
    """Write all of `view` at `offset` of file `fd`, refusing to write more than `room` bytes."""
    if view.nbytes > room:
        raise SlimError("an array is larger than the space reserved for it")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
