"""`slimkit compress` routes bare checkpoints to streaming; the `affine` codec on its own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slimkit as sk
from cli_runner import cli
from slimkit.core.errors import SlimFormatError
from slimkit.io.codecs import decode_chain, encode_chain

from .conftest import write_sharded


def test_cli_streams_a_safetensors_file(monkeypatch, capsys, tmp_path, ckpt, tensors):
    code, out, _ = cli(monkeypatch, capsys, "compress", str(ckpt), "--recipe", "int8",
                       "--out", str(tmp_path / "q.slim"), "--json")
    assert code == 0
    row = json.loads(out.strip().splitlines()[-1])
    assert row["bytes"] == (tmp_path / "q.slim").stat().st_size and row["tensors"] == len(tensors)
    assert row["ratio"] > 2 and row["throughput_mb_s"] > 0
    assert sk.load_state_dict(tmp_path / "q.slim")["lm_head.weight"].shape == (96, 64)


def test_cli_streams_a_sharded_folder(monkeypatch, capsys, tmp_path, tensors):
    folder = tmp_path / "ck"
    folder.mkdir()
    write_sharded(folder, tensors)
    code, out, _ = cli(monkeypatch, capsys, "compress", str(folder), "--recipe", "int8",
                       "--out", str(tmp_path / "q.slim"))
    assert code == 0 and "smaller than the checkpoint" in out and "MB/s" in out


def test_cli_data_dependent_recipe_is_one_line(monkeypatch, capsys, tmp_path, ckpt):
    code, _, err = cli(monkeypatch, capsys, "compress", str(ckpt), "--recipe", "int4",
                       "--out", str(tmp_path / "q.slim"))
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert lines[-1].startswith("slimkit: error:") and "stage 1 (gptq)" in lines[-1]
    assert not (tmp_path / "q.slim").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_affine_codec_round_trip(dtype, symmetric):
    w = np.random.default_rng(0).normal(size=(8, 64)).astype(dtype)
    chain = [{"codec": "affine", "bits": 4, "symmetric": symmetric, "group_size": 16},
             {"codec": "bitpack", "bits": 4}]
    stored, stages = encode_chain(w, chain)
    assert stored["data"].nbytes == w.size // 2
    back = decode_chain(stored, stages)
    assert back.dtype == w.dtype and back.shape == w.shape
    step = np.abs(w.astype(np.float32)).reshape(8, 4, 16).max(-1, keepdims=True) / (7 if symmetric else 7.5)
    assert (np.abs(back.astype(np.float32) - w).reshape(8, 4, 16) <= step / 2 + 2e-3).all()


@pytest.mark.parametrize("change", [{"group_size": 48}, {"bits": 9}, {"dtype": "int32"}, {"symmetric": "yes"}])
def test_affine_codec_refuses_bad_params(change):
    w = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    stored, stages = encode_chain(w, [{"codec": "affine", "bits": 8}])
    stages[0] |= change
    with pytest.raises(SlimFormatError, match="affine"):
        decode_chain(stored, stages)


def test_affine_codec_refuses_a_wrong_scale_shape():
    w = torch.randn(4, 32).numpy()
    stored, stages = encode_chain(w, [{"codec": "affine", "bits": 8}])
    stored["0.scale"] = stored["0.scale"][:2]
    with pytest.raises(SlimFormatError, match="scale"):
        decode_chain(stored, stages)


def test_routing(tmp_path, ckpt, tensors):
    from slimkit.stream.route import wants_streaming

    assert wants_streaming(str(ckpt), "int4")                 # a bare file: always (errors name the stage)
    folder = tmp_path / "hf"
    folder.mkdir()
    write_sharded(folder, tensors)
    assert wants_streaming(str(folder), "int8") and wants_streaming(str(folder), "int4")
    (folder / "config.json").write_text("{}")                 # an architecture: data-dependent recipes use it
    assert wants_streaming(str(folder), "int8") and not wants_streaming(str(folder), "int4")
    assert not wants_streaming("builtin:lenet-300-100", "int8")
