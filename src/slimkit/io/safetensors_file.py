"""Read and write safetensors files with validation before allocation, and atomic writes.

The reader validates the header before it reads anything (`slimkit.io.safetensors_header`: length
against the file size, every tensor's dtype, shape and byte range, no overlap), so a truncated or
lying file is refused with `SlimFormatError` instead of a huge allocation; data is read with pread.
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
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.safetensors_header import _CODES, _DTYPES, TORCH_NAMES, header_json, read_header


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
