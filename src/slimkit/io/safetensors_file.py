"""Read and write safetensors files with validation before allocation, and atomic writes.

Over 400 lines: reading and writing share the bounds checks and the atomic-write helpers that
every .slim path goes through; kept together so no writer can skip them.

The reader checks the header length against the file size, every tensor's dtype, shape and byte
range (inside the data section, no overlap, size = elements x itemsize) before it reads anything,
so a truncated or lying file is refused with `SlimFormatError` instead of a huge allocation.
Every safetensors dtype is accepted, bfloat16 included (the usual dtype of LLM checkpoints):
numpy has no bfloat16, so `SafetensorsReader.get` returns its bit patterns as uint16 and
`SafetensorsReader.get_torch` the real torch tensor.

>>> with SafetensorsReader("model.safetensors") as f:
...     f.dtype("model.embed_tokens.weight"), f.get_torch("model.embed_tokens.weight").dtype
('bfloat16', torch.bfloat16)
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
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


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # no /proc: the classic read-by-setting (not thread-safe, rarely reached)
    os.umask(mask)
    return mask


def _why(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, before any work, an output path that cannot or must not be written (SlimError, one
    line): a folder, a missing or read-only folder, or (without `overwrite`) an existing file. The
    folder is probed by creating and removing a unique temporary file in it.

    >>> check_writable("out/model.slim")            # SlimError if out/ is read-only
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise SlimError(f"cannot write {path}: not a file name")
    if path.is_dir():
        raise SlimError(f"cannot write {path}: it is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SlimError(f"cannot write {path}: folder {folder} does not exist")
    if not overwrite and os.path.lexists(path):
        raise SlimError(f"{path} already exists; pass --force to replace it")
    why = probe_folder(folder)
    if why:
        raise SlimError(f"cannot write {path}: folder {folder}: {why}")


def probe_folder(folder: str | os.PathLike) -> str | None:
    """Why files cannot be created in `folder` (e.g. "Read-only file system"), or None if they can:
    a unique temporary file is created and removed (permission bits alone do not tell, e.g. for root
    or on a read-only mount)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".slimkit-", suffix=".probe", dir=folder)
    except OSError as exc:
        return _why(exc)
    os.close(fd)
    with _suppress():
        os.unlink(tmp)
    return None


class AtomicFile:
    """A new file for `path`, written under a unique temporary name in the same folder and renamed
    to `path` by `commit` after an fsync: a crash at any moment leaves the old file or the new one,
    never a partial file. `discard` (or leaving a `with` block without `commit`) removes it.

    The temporary file is created by `mkstemp` (O_EXCL: never an existing file, never through a
    symlink planted under its name); the output gets mode 0666 less the umask, as `open` would give.
    With `overwrite=False` the commit fails with SlimError when `path` exists by then (a hard link of
    the temporary file, which cannot replace anything): a check atomic with the rename, so that of
    two writers racing to the same new path exactly one succeeds.

    Writes go straight to the file descriptor: `write` appends, `pwrite` writes at an offset, so a
    file far larger than memory can be written piece by piece, in any order.

    >>> with AtomicFile("model.slim") as f:
    ...     f.write(header)
    ...     f.pwrite(block, offset)
    ...     f.commit()
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = True):
        self.path = Path(path)
        self.overwrite = overwrite
        self.folder = self.path.parent if str(self.path.parent) else Path(".")
        if not self.folder.is_dir():
            raise SlimError(f"cannot write {self.path}: folder {self.folder} does not exist")
        try:
            self.fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.folder)
        except OSError as exc:
            raise SlimError(f"cannot write {self.path}: {_why(exc)}") from None
        self.tmp = Path(tmp)
        self.committed = False

    def write(self, data: bytes | memoryview) -> None:
        """Append `data` (any C-contiguous buffer)."""
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            raise SlimError(f"cannot write {self.path}: {_why(exc)}") from None

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write `data` at byte `offset` (the file grows as needed)."""
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise SlimError(f"cannot write {self.path}: {_why(exc)}") from None

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def commit(self, verify: Callable[[Path], object] | None = None) -> None:
        """Set the mode from the umask, fsync, rename to `path` (or link, without `overwrite`),
        fsync the folder. `verify(temporary path)` runs on the finished file before it takes its
        name: if it raises, nothing is renamed (and leaving the `with` block removes the file)."""
        try:
            os.fchmod(self.fd, 0o666 & ~umask())
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            if verify is not None:
                verify(self.tmp)
            if self.overwrite:
                os.replace(self.tmp, self.path)
            else:
                _link_new(self.tmp, self.path)
        except FileExistsError:
            raise SlimError(f"{self.path} already exists (written meanwhile by another process); "
                            "pass --force to replace it") from None
        except OSError as exc:
            raise SlimError(f"cannot write {self.path}: {_why(exc)}") from None
        self.committed = True
        with _suppress():
            dfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def discard(self) -> None:
        """Close and remove the temporary file, unless committed (then only close)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.committed:
            with _suppress():
                os.unlink(self.tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


# link(2) fails with these where a file system has no hard links (FAT, some network and FUSE mounts)
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}


def _link_new(tmp: Path, path: Path) -> None:
    """Give the finished `tmp` the name `path` only if `path` does not exist (FileExistsError
    otherwise), in one step: a hard link, then `tmp` is removed. Where the file system has no hard
    links: renameat2(RENAME_NOREPLACE), else a check then a rename (a small race, documented)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if not _rename_noreplace(tmp, path):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
            os.rename(tmp, path)
        return
    with _suppress():
        os.unlink(tmp)


def _rename_noreplace(tmp: Path, path: Path) -> bool:
    """renameat2(..., RENAME_NOREPLACE) through libc; False where the kernel or libc lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rename2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, noreplace = -100, 1
    if rename2(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(path), noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(path))


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview], overwrite: bool = True,
                 verify: Callable[[Path], object] | None = None) -> None:
    """Write `chunks` to `path` via a unique temporary file in the same folder, fsync, then rename
    (`AtomicFile`; `overwrite=False`: SlimError if `path` exists when the file is complete). A
    crash at any moment leaves either the old file or the new one, never a partial file; `chunks`
    may be a generator, so the content need never be whole in memory. `verify`: see `AtomicFile.commit`.
    """
    with AtomicFile(path, overwrite) as f:
        for chunk in chunks:
            f.write(chunk)
        f.commit(verify)


def serialize(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> list[bytes | memoryview]:
    """Return the chunks of a safetensors file holding `arrays` and `metadata`."""
    entries: list[tuple[str, str, list[int], int]] = []
    payload: list[memoryview] = []
    for name in sorted(arrays):
        arr = np.array(arrays[name], order="C", copy=None)
        if arr.dtype not in _CODES:
            raise SlimError(f"cannot store tensor {name!r} of dtype {arr.dtype}")
        entries.append((name, _CODES[arr.dtype], list(arr.shape), arr.nbytes))
        payload.append(memoryview(arr.reshape(-1).view(np.uint8)))
    raw = header_json(metadata, entries)
    return [len(raw).to_bytes(8, "little"), raw, *payload]


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


def read_exactly(fd: int, buffer, offset: int, where: str) -> None:
    """Fill `buffer` (any writable C-contiguous buffer) from byte `offset` of file `fd` with pread:
    SlimFormatError if the file ends first. Reading through a memory map instead would kill the
    process with SIGBUS (or, in a file's last page, silently read zeros) when the file is truncated
    while it is read; pread just returns short.

    >>> arr = np.empty(16, np.float32); read_exactly(fh.fileno(), memoryview(arr).cast("B"), 128, "m.slim")
    """
    view = memoryview(buffer).cast("B")
    end = offset + view.nbytes
    while view:
        try:
            got = os.preadv(fd, [view[:READ_CHUNK]], offset)
        except OSError as exc:
            raise SlimError(f"cannot read {where}: {_why(exc)}") from None
        if got == 0:
            raise SlimFormatError(f"{where}: the file ends before byte {offset} (bytes up to {end} were to be "
                                  "read): it was truncated or changed while being read")
        view, offset = view[got:], offset + got


READ_CHUNK = 1 << 30   # bytes per pread call (Linux caps one call near 2 GiB)


class SafetensorsReader:
    """A validated safetensors file, read with pread (`read_exactly`, never a memory map: a file
    truncated meanwhile gives SlimFormatError, not SIGBUS). Use as a context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise SlimError(f"no such file: {self.path}")
        self._fh = open(self.path, "rb")
        try:
            size = os.fstat(self._fh.fileno()).st_size
            self.entries, self.metadata, self._start = read_header(self._fh, size, str(self.path))
        except BaseException:
            self._fh.close()
            raise

    def keys(self) -> list[str]:
        return list(self.entries)

    def nbytes(self, key: str) -> int:
        begin, end = self.entries[key]["data_offsets"]
        return end - begin

    def dtype(self, key: str) -> str:
        """The torch dtype name of tensor `key` ("bfloat16", "float32", ...)."""
        return TORCH_NAMES[self.entries[key]["dtype"]]

    def get_torch(self, key: str):
        """Tensor `key` as a torch tensor (its own memory; bfloat16 stays bfloat16)."""
        import torch

        tensor = torch.from_numpy(self.get(key))
        return tensor.view(torch.bfloat16) if self.dtype(key) == "bfloat16" else tensor

    def get(self, key: str) -> np.ndarray:
        """Tensor `key` read into a new array; a bfloat16 tensor comes as its uint16 bit patterns.
        SlimFormatError if the file no longer holds it (truncated since it was opened)."""
        if key not in self.entries:
            raise SlimFormatError(f"{self.path}: missing tensor {key!r}")
        if self._fh.closed:
            raise SlimError(f"{self.path}: the file was closed")
        entry = self.entries[key]
        begin, end = entry["data_offsets"]
        arr = np.empty(tuple(entry["shape"]), dtype=np.dtype(_DTYPES[entry["dtype"]]))
        if end > begin:
            read_exactly(self._fh.fileno(), arr.reshape(-1).view(np.uint8), self._start + begin, str(self.path))
        return arr

    def read(self, key: str, begin: int = 0, end: int | None = None) -> bytes:
        """Bytes begin..end of tensor `key`'s data (all of it by default), read from the file."""
        first, last = self.entries[key]["data_offsets"]
        end = last - first if end is None else end
        if not 0 <= begin <= end <= last - first:
            raise SlimFormatError(f"{self.path}: bytes {begin}..{end} lie outside tensor {key!r}")
        out = bytearray(end - begin)
        read_exactly(self._fh.fileno(), out, self._start + first + begin, str(self.path))
        return bytes(out)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
