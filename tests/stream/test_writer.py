"""The incremental writer: both modes give the same bytes; reserved sizes are enforced."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.core.errors import SlimError
from slimkit.io.layout import SlimWriter
from slimkit.io.manifest import Manifest, TensorEntry
from slimkit.io.safetensors_file import SafetensorsReader

ARRAYS = {"a": np.arange(7, dtype=np.uint8), "b": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
          "c": np.arange(5, dtype=np.float16), "d": np.arange(3, dtype=np.float64)}
MANIFEST = Manifest(base={"kind": "weights"}, tensors={k: TensorEntry(dtype=str(v.dtype), shape=list(v.shape))
                                                       for k, v in ARRAYS.items()})


def _write(path, reserve: bool) -> bytes:
    with SlimWriter(path) as w:
        if reserve:
            w.reserve([(k, v.dtype, list(v.shape)) for k, v in ARRAYS.items()], MANIFEST)
        for k, v in ARRAYS.items():
            w.add(k, v.dtype, list(v.shape), [v.reshape(-1)[:2], v.reshape(-1)[2:]])
        w.finish(MANIFEST)
    return path.read_bytes()


def test_reserved_and_two_pass_files_are_identical_and_aligned(tmp_path):
    assert _write(tmp_path / "a.slim", True) == _write(tmp_path / "b.slim", False)
    with SafetensorsReader(tmp_path / "a.slim") as r:
        for k, v in ARRAYS.items():
            assert np.array_equal(r.get(k), v)
            assert (r._start + r.entries[k]["data_offsets"][0]) % v.dtype.itemsize == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.slim", "b.slim"]


def test_reserved_sizes_are_enforced(tmp_path):
    with SlimWriter(tmp_path / "x.slim") as w:
        w.reserve([("a", np.dtype(np.uint8), [7])], MANIFEST)
        with pytest.raises(SlimError, match="not reserved"):
            w.add("b", np.dtype(np.uint8), [7], [np.zeros(7, np.uint8)])
        with pytest.raises(SlimError, match="larger than the space"):
            w.add("a", np.dtype(np.uint8), [7], [np.zeros(9, np.uint8)])
        with pytest.raises(SlimError, match="not written"):
            w.finish(MANIFEST)
    assert list(tmp_path.iterdir()) == []
