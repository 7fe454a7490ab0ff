"""The io reader takes every safetensors dtype, bfloat16 and float16 included (LLM checkpoints)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slimkit.core.errors import SlimFormatError
from slimkit.io.safetensors_file import SafetensorsReader, serialize


def test_bf16_and_fp16_tensors_read_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(5, 7, generator=g).to(torch.bfloat16), "b": torch.randn(3, generator=g).half(),
               "c": torch.arange(6, dtype=torch.int64)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with SafetensorsReader(tmp_path / "m.safetensors") as f:
        assert [f.dtype(k) for k in "abc"] == ["bfloat16", "float16", "int64"]
        assert f.get("a").dtype == np.uint16   # numpy has no bfloat16: the bit patterns
        for k, want in tensors.items():
            got = f.get_torch(k)
            assert got.dtype == want.dtype and torch.equal(got, want), k


def test_a_lying_bf16_entry_is_refused(tmp_path):
    raw = json.dumps({"x": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "bad.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(16))
    with pytest.raises(SlimFormatError, match="byte count does not match"):
        SafetensorsReader(tmp_path / "bad.safetensors")


def test_numpy_arrays_are_still_written_with_their_own_codes():
    header = serialize({"u": np.zeros(2, np.uint16)}, {})[1]
    assert b'"U16"' in header and b"BF16" not in header
