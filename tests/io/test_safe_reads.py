"""Inputs that change while they are read (issue 22): a truncated file is a one-line SlimFormatError,
never SIGBUS (files are read with pread, not memory-mapped) and never silently zeros; a streamed
compress whose input shrinks leaves nothing behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.artifact import read_raw, write_raw
from slimkit.io.safetensors_file import SafetensorsReader, atomic_write, serialize
from slimkit.stream import api
from slimkit.stream.checkpoint import open_checkpoint


def checkpoint(path, rows=256):
    torch.manual_seed(0)
    arrays = {f"layer{i}.weight": torch.randn(rows, 64).numpy() for i in range(3)}
    atomic_write(path, serialize(arrays, {}))
    return arrays


def test_reader_refuses_a_file_truncated_after_it_was_opened(tmp_path):
    path = tmp_path / "ck.safetensors"
    arrays = checkpoint(path)
    with SafetensorsReader(path) as reader:
        np.testing.assert_array_equal(reader.get("layer0.weight"), arrays["layer0.weight"])
        os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(SlimFormatError, match="truncated or changed while being read"):
            reader.get("layer2.weight")


def test_small_files_never_read_as_zeros(tmp_path):
    """Under a page, a memory map read a truncated file's missing bytes as zeros."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    packed, named = tmp_path / "packed.slim", tmp_path / "named.slim"
    sk.save(model, packed)
    write_raw(named, *read_raw(packed))
    assert named.stat().st_size < 4096
    with sk.load_state_dict(named, lazy=True) as tensors:
        os.truncate(named, 200)
        with pytest.raises(SlimFormatError, match="truncated"):
            tensors["0.weight"]
    with sk.load_state_dict(packed, lazy=True) as tensors:   # the packed payload is read whole at open
        os.truncate(packed, 200)
        torch.testing.assert_close(tensors["0.weight"], model[0].weight.detach())


def test_streamed_checkpoint_blocks_refuse_a_truncated_file(tmp_path):
    path = tmp_path / "ck.safetensors"
    arrays = checkpoint(path)
    with open_checkpoint(path) as ck:
        first, *_, last = ck.items()
        np.testing.assert_array_equal(ck.rows(first, 0, 4).numpy(), arrays[first.name][:4])
        os.truncate(path, 4096)
        with pytest.raises(SlimFormatError, match="truncated"):
            ck.rows(last, 0, 4)
        with pytest.raises(SlimFormatError, match="truncated"):
            ck.raw(last)


def test_streamed_compress_of_a_shrinking_input_fails_cleanly(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    checkpoint(path)
    real = api.encode_item

    def encode_then_truncate(ck, item, *args, **kwargs):
        out = real(ck, item, *args, **kwargs)
        os.truncate(path, min(path.stat().st_size, 4096))
        return out

    monkeypatch.setattr(api, "encode_item", encode_then_truncate)
    with pytest.raises(SlimError, match="truncated"):
        api.compress_checkpoint(path, "int8", tmp_path / "out.slim")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"], "temporary files left behind"
