"""A read-only state dict over a .slim file that decodes each tensor when it is looked up.

The file is validated (header, manifest, array layout) when opened; a tensor's payload is only
read and decoded on access, so a large artifact can be inspected or loaded piece by piece.

>>> with slimkit.load_state_dict("model.slim", lazy=True) as tensors:
...     list(tensors)[:2], tensors["model.layers.0.mlp.up_proj.weight"].shape
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import torch

from slimkit.core.errors import SlimFormatError
from slimkit.io.decode import _read_manifest, decode_tensor, group_arrays
from slimkit.io.layout import StoredArrays
from slimkit.io.manifest import Manifest
from slimkit.io.safetensors_file import SafetensorsReader


class LazyStateDict(Mapping):
    """Mapping tensor name -> decoded torch tensor, decoded on each lookup (not cached).

    `decoded` counts the decodes done so far. Close it (or use `with`) to release the file.
    """

    def __init__(self, path: str | os.PathLike):
        self._file = SafetensorsReader(path)
        try:
            self.manifest: Manifest = _read_manifest(self._file)
            self._where = str(self._file.path)
            self._reader = StoredArrays(self._file, self.manifest)
            self._keys = group_arrays(self._reader, self.manifest, self._where)
            self._size = self._file.path.stat().st_size
        except BaseException:
            self._file.close()
            raise
        self.decoded = 0

    def _target(self, key: str) -> str:
        return self.manifest.aliases.get(key, key)

    def __getitem__(self, key: str) -> torch.Tensor:
        name = self._target(key)
        if name not in self.manifest.tensors:
            raise KeyError(key)
        if self._file._fh.closed:
            raise SlimFormatError(f"{self._where}: the lazy state dict was closed")
        tensor = decode_tensor(self._reader, self._keys[name], name, self.manifest.tensors[name],
                               self._where, self._size)
        self.decoded += 1
        return tensor

    def __iter__(self) -> Iterator[str]:
        yield from self.manifest.tensors
        yield from self.manifest.aliases

    def __len__(self) -> int:
        return len(self.manifest.tensors) + len(self.manifest.aliases)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._target(key) in self.manifest.tensors

    def shape(self, key: str) -> list[int]:
        """The decoded shape of `key`, without decoding it."""
        return list(self.manifest.tensors[self._target(key)].shape)

    def close(self) -> None:
        self._reader = None  # type: ignore[assignment]
        self._file.close()

    def __enter__(self) -> LazyStateDict:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyStateDict({self._where!r}, {len(self)} tensors)"
