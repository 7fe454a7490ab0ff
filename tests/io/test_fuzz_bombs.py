"""Crafted amplification attacks the fuzzer's mutations are unlikely to build by chance: each stays
within every per-tensor bound, so only a whole-file budget refuses it before the memory is spent."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import slimkit as sk
from slimkit.io.artifact import decoded_budget
from slimkit.io.layout import PAYLOAD, TAIL_KEY, ZDICT, file_chunks
from slimkit.io.manifest import Manifest, TensorEntry
from slimkit.io.safetensors_file import atomic_write, serialize


def test_many_small_tensors_cannot_expand_a_file_1000x(tmp_path):
    """8,000 two-byte single-symbol Huffman streams, each allowed 12 KB on its own: 98 MB from 79 KB."""
    n, count = 8000, 12288
    arrays = {f"t{i}": np.array([0, 0x10], np.uint8) for i in range(n)}
    tensors = {f"t{i}": TensorEntry(dtype="uint8", shape=[count], chain=[{"codec": "huffman", "shape": [count]}])
               for i in range(n)}
    path = tmp_path / "many.slim"
    atomic_write(path, file_chunks(arrays, Manifest(base={"kind": "user"}, tensors=tensors)))
    assert n * count > decoded_budget(path.stat().st_size)
    with pytest.raises(sk.SlimFormatError, match="decoded bytes in all"):
        sk.load_state_dict(path)
    small = {k: arrays[k] for k in list(arrays)[:50]}
    path_ok = tmp_path / "few.slim"
    atomic_write(path_ok, file_chunks(small, Manifest(base={"kind": "user"},
                                                      tensors={k: tensors[k] for k in small})))
    state = sk.load_state_dict(path_ok)
    assert len(state) == 50 and int(state["t0"].sum()) == 0 and state["t0"].numel() == count


def test_deflate_bomb_manifest_is_refused_before_parsing(tmp_path):
    """15 MB of `{}` objects (~0.5 GB of Python dicts) deflated into 15 KB."""
    text = '{"base":{"kind":"user"},"tensors":{},"info":{"x":[' + ",".join(["{}"] * 5_000_000) + "]}}"
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=ZDICT)
    tail = deflate.compress(text.encode()) + deflate.flush()
    path = tmp_path / "bomb.slim"
    atomic_write(path, serialize({PAYLOAD: np.frombuffer(tail, np.uint8)}, {TAIL_KEY: str(len(tail))}))
    assert path.stat().st_size < 20_000
    with pytest.raises(sk.SlimFormatError, match="too large"):
        sk.read_manifest(path)


def test_intermediate_stage_sizes_are_bounded(tmp_path):
    """A chain whose *inner* stage declares 2**40 elements (the final shape looks harmless) is refused
    before numpy is asked for the memory (the fuzzer's first ValueError: 'Maximum allowed dimension')."""
    from slimkit.io.codecs import decode_chain

    stored = {"data": np.zeros(4, np.float32), "0.mask": np.zeros(1, np.uint8)}
    stages = [{"codec": "sparse", "shape": [2**40], "dtype": "float32", "nnz": 4, "index": "mask", "side": ["mask"]}]
    with pytest.raises(sk.SlimFormatError, match="declares"):
        decode_chain(stored, stages, max_bytes=1 << 20)
    stages[0]["shape"] = [8]
    with pytest.raises(sk.SlimFormatError, match="bitmask"):
        decode_chain(stored, stages, max_bytes=1 << 20)
