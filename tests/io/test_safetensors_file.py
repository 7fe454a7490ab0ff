from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.safetensors_file import SafetensorsReader, atomic_write, serialize
from slimkit.io.safetensors_header import read_header


def _write(path, arrays, meta=None):
    atomic_write(path, serialize(arrays, meta or {"k": "v"}))


def test_written_file_is_standard_safetensors(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(7, dtype=np.int64),
              "c": np.zeros((0, 4), dtype=np.uint8)}
    _write(tmp_path / "x.safetensors", arrays)
    theirs = load_file(str(tmp_path / "x.safetensors"))
    with SafetensorsReader(tmp_path / "x.safetensors") as r:
        assert r.metadata == {"k": "v"}
        for key, value in arrays.items():
            assert np.array_equal(r.get(key), value) and r.get(key).shape == value.shape
            assert np.array_equal(theirs[key], value)


def _raw(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize("blob, message", [
    (b"", "too short"),
    (b"\xff" * 8 + b"{}", "header length"),
    ((5).to_bytes(8, "little") + b"nope!", "not valid JSON"),
    (_raw({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "outside the file"),
    (_raw({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16), "byte count"),
    (_raw({"t": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unsupported dtype"),
    (_raw({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "invalid shape"),
    (_raw({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
           "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 6), "overlap"),
    (_raw({"__metadata__": {"a": 1}}), "__metadata__"),
    (_raw({"t": [1]}), "malformed header entry"),
    (_raw({"t": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0], "x": 1}}), "malformed header entry"),
    (_raw({"t": {"dtype": 5, "shape": [0], "data_offsets": [0, 0]}}), "unsupported dtype"),
    (_raw({"t": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\0"), "invalid shape"),
    (_raw({"t": {"dtype": "U8", "shape": "1", "data_offsets": [0, 1]}}, b"\0"), "invalid shape"),
    (_raw({"t": {"dtype": "U8", "shape": [1] * 33, "data_offsets": [0, 1]}}, b"\0"), "invalid shape"),
    (_raw({"t": {"dtype": "U8", "shape": [2**40], "data_offsets": [0, 1]}}, b"\0"), "invalid shape"),
    (_raw({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0.0, 1]}}, b"\0"), "outside the file"),
    (_raw({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 1]}}, b"\0"), "outside the file"),
])
def test_reader_refuses_malformed_files(tmp_path, blob, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(SlimFormatError, match=message):
        SafetensorsReader(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(SlimError, match="no such file"):
        SafetensorsReader(tmp_path / "absent.slim")


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def chunks():
        yield b"new-partial"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, chunks())
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"], "temporary file left behind"


def test_atomic_write_needs_existing_folder(tmp_path):
    with pytest.raises(SlimError, match="does not exist"):
        atomic_write(tmp_path / "no" / "x.bin", [b"x"])


def test_a_header_of_many_entries_is_parsed_without_collector_passes(tmp_path):
    """A header of a million zero-size tensors (57 MB, admitted by a 900 MB file) took ~10 s of CPU,
    half of it the cyclic collector walking the parsed entries again and again (issue 22)."""
    header = {f"z{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(50_000)}
    path = tmp_path / "many.safetensors"
    path.write_bytes(_raw(header))
    passes = []

    def count(phase, info):
        passes.append(phase)

    gc.callbacks.append(count)
    try:
        with open(path, "rb") as fh:
            entries, _, _ = read_header(fh, path.stat().st_size, "many")
    finally:
        gc.callbacks.remove(count)
    assert len(entries) == 50_000 and gc.isenabled()
    assert len(passes) <= 2, len(passes)     # one collection may start as it is enabled again


def test_a_header_of_more_tensors_than_any_model_holds_is_refused_before_parsing(tmp_path, monkeypatch):
    """Zero-size tensors take no bytes, so their number is bounded by MAX_ENTRIES, counted before the
    JSON is parsed (a 57 MB header of a million took 7 s of CPU to parse and check)."""
    from slimkit.io import safetensors_header

    monkeypatch.setattr(safetensors_header, "MAX_ENTRIES", 1000)
    header = {f"z{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(1001)}
    path = tmp_path / "many.safetensors"
    path.write_bytes(_raw(header))
    parsed = []
    monkeypatch.setattr(safetensors_header.json, "loads", lambda *a, **k: parsed.append(1))
    with open(path, "rb") as fh, pytest.raises(SlimFormatError, match="more than 1000 tensors"):
        read_header(fh, path.stat().st_size, "many")
    assert parsed == []
    header.pop("z0"), header.pop("z1")   # 999 entries and a name holding the key's text (escaped: not counted)
    header['x"data_offsets"'] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    path.write_bytes(_raw(header))
    monkeypatch.undo()
    monkeypatch.setattr(safetensors_header, "MAX_ENTRIES", 1000)
    with open(path, "rb") as fh:
        assert len(read_header(fh, path.stat().st_size, "many")[0]) == 1000
