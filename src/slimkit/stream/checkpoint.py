"""Read a `.safetensors` checkpoint, or a sharded Hugging Face one, tensor by tensor, block by block.

Every header is validated before anything is read (`slimkit.io.safetensors_header.read_header`,
the one validator of safetensors headers; bfloat16 included). Blocks are read with pread into buffers
of their own (`read_exactly`), never through a memory map: a file truncated or rewritten while it is
read gives a one-line SlimFormatError instead of killing the process with SIGBUS, and memory holds
only the blocks being worked on (each is freed when dropped; `release` is kept for callers, a no-op).

>>> with open_checkpoint("model.safetensors.index.json") as ck:   # or a folder, or one .safetensors
...     for item in ck.items():
...         block = ck.rows(item, 0, 16)          # rows 0..15, read from the file
...         ck.release(item)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from slimkit.core.errors import SlimError
from slimkit.io.safetensors_file import read_exactly
from slimkit.io.safetensors_header import TORCH_NAMES, read_header
from slimkit.io.shards import checkpoint_files, missing_in_shards

FLOATS = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Item:
    """One tensor of the checkpoint: where it lies and what it is."""

    name: str
    shard: int          # index into the checkpoint's shards
    dtype: str          # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    begin: int          # absolute byte offset in the shard file
    nbytes: int

    @property
    def itemsize(self) -> int:
        return self.nbytes // max(1, math.prod(self.shape)) if self.nbytes else 0

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOATS


class _Shard:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.fh = open(path, "rb")
        except OSError as exc:
            raise SlimError(f"cannot read {path}: {exc.strerror}") from None
        try:
            self.size = os.fstat(self.fh.fileno()).st_size
            self.header, _, self.start = read_header(self.fh, self.size, str(path))
        except BaseException:
            self.fh.close()
            raise

    def read_into(self, buffer, offset: int, what: str) -> None:
        """Fill `buffer` from absolute byte `offset` (SlimFormatError if the file has shrunk since)."""
        read_exactly(self.fh.fileno(), buffer, offset, f"{self.path.name} ({what})")

    def close(self) -> None:
        self.fh.close()


class Checkpoint:
    """The tensors of one or more safetensors shards, in file order. Use as a context manager."""

    def __init__(self, shard_paths: list[Path], names: dict[str, int] | None = None, source: str = ""):
        self.source = source or str(shard_paths[0])
        self.shards: list[_Shard] = []
        try:
            for p in shard_paths:
                self.shards.append(_Shard(p))
        except BaseException:
            self.close()
            raise
        self._items: list[Item] = []
        for i, shard in enumerate(self.shards):
            for name, entry in sorted(shard.header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                if names is not None and names.get(name) != i:
                    continue
                begin, end = entry["data_offsets"]
                dtype = TORCH_NAMES[entry["dtype"]]
                self._items.append(Item(name, i, dtype, tuple(entry["shape"]), shard.start + begin, end - begin))
        if names is not None:
            missing_in_shards(names, {it.name for it in self._items}, [s.path for s in self.shards],
                              self.source)

    def items(self) -> list[Item]:
        return list(self._items)

    @property
    def nbytes(self) -> int:
        """Total bytes of the tensors (the checkpoint's size, less headers)."""
        return sum(it.nbytes for it in self._items)

    def rows(self, item: Item, r0: int, r1: int):
        """Rows r0..r1-1 of `item` (its first dimension; a 0-/1-D tensor is one row) as a new torch
        tensor read from the file, shape (r1 - r0, cols)."""

        rows = item.shape[0] if len(item.shape) >= 2 else 1
        cols = math.prod(item.shape[1:]) if len(item.shape) >= 2 else math.prod(item.shape)
        if not 0 <= r0 <= r1 <= rows:
            raise IndexError(f"rows {r0}..{r1} outside {rows}")
        count = (r1 - r0) * cols
        dtype = getattr(torch, item.dtype)
        out = torch.empty((r1 - r0, cols), dtype=dtype)
        if count:
            self.shards[item.shard].read_into(out.view(-1).view(torch.uint8).numpy(),
                                              item.begin + r0 * cols * item.itemsize, f"rows {r0}..{r1}")
        return out

    def tensor(self, item: Item):
        """The whole tensor, read from the file, in its own shape."""
        rows = item.shape[0] if len(item.shape) >= 2 else 1
        return self.rows(item, 0, rows).reshape(item.shape)

    def raw(self, item: Item, begin: int = 0, end: int | None = None) -> memoryview:
        """Bytes begin..end of the tensor's data, read from the file."""
        end = item.nbytes if end is None else end
        if not 0 <= begin <= end <= item.nbytes:
            raise IndexError(f"bytes {begin}..{end} outside {item.nbytes}")
        out = bytearray(end - begin)
        if out:
            self.shards[item.shard].read_into(out, item.begin + begin, f"bytes {begin}..{end}")
        return memoryview(out)

    def release(self, item: Item, begin: int = 0, end: int | None = None) -> None:
        """Nothing to do: blocks are buffers of their own, freed when the caller drops them. (Kept so
        that readers say where a block's use ends; a memory-mapped reader once unmapped pages here.)"""

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A `.safetensors` file, a sharded checkpoint's `model.safetensors.index.json`, or a folder
    holding either (`slimkit.io.shards.checkpoint_files`); errors name the missing shard or the broken file."""
    paths, names, source = checkpoint_files(path)
    return Checkpoint(paths, names, source=source)


def iter_row_blocks(rows: int, cols: int, itemsize: int, budget: int) -> Iterator[tuple[int, int]]:
    """(r0, r1) blocks of about `budget` bytes, each a multiple of 8 rows except the last (so
    that bit-packed codes of consecutive blocks concatenate byte-exactly)."""
    step = max(8, budget // max(1, cols * itemsize) // 8 * 8)
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)
