"""Streamed compresses read their file back before it takes the output's name (issue 22): the
manifest, every array's CRC-32, every tensor decoded one at a time (up to the run's memory bound)
and the architecture it names; a file that fails any of these is refused, exit 2, and nothing is left."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.io import safetensors_file
from slimkit.stream import api, encode, layerwise
from slimkit.stream.api import compress_checkpoint
from slimkit.stream.layerwise import compress_layerwise
from slimkit.stream.plan import KMeansSpec, StreamPlan

from ..cli_runner import cli

tf = pytest.importorskip("transformers")
KMEANS = StreamPlan(kmeans=KMeansSpec(4, coding="huffman"))


def _left(folder, *keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture()
def corrupt_before_commit(monkeypatch):
    """Flip the last byte of every finished file before its reload check runs (a write that did not
    reach the disk as it was meant to)."""
    real = safetensors_file.AtomicFile.commit

    def commit(self, verify=None):
        size = os.fstat(self.fd).st_size
        last = os.pread(self.fd, 1, size - 1)
        os.pwrite(self.fd, bytes([last[0] ^ 0xFF]), size - 1)
        return real(self, verify)

    monkeypatch.setattr(safetensors_file.AtomicFile, "commit", commit)


def test_streamed_file_is_read_back_and_verified(tmp_path, ckpt, tensors):
    report = compress_checkpoint(ckpt, "int8", tmp_path / "out.slim")
    assert report.verified == {"arrays": report.verified["arrays"], "decoded": len(tensors), "not_decoded": 0}
    assert report.verified["arrays"] > len(tensors)   # int8 codes and their scales
    small = compress_checkpoint(ckpt, "int8", tmp_path / "small.slim", block_bytes=1024)   # decodes <= 16 KiB
    big = [k for k, t in tensors.items() if t.numel() * 4 > api.DECODE_BLOCKS * 1024]
    assert big and small.verified["not_decoded"] == len(big)
    assert small.verified["decoded"] == len(tensors) - len(big)
    kmeans = compress_checkpoint(ckpt, KMEANS, tmp_path / "km.slim", block_bytes=1024)   # whole tensors
    assert kmeans.verified["not_decoded"] == 0


# the header written first (int8), or the file assembled at the end (k-means)
@pytest.mark.parametrize("recipe", ["int8", KMEANS], ids=["int8", "kmeans"])
def test_a_file_whose_bytes_differ_from_what_was_written_is_refused(tmp_path, ckpt, recipe, corrupt_before_commit):
    with pytest.raises(SlimError, match="other bytes in array .* than were written; it was not kept"):
        compress_checkpoint(ckpt, recipe, tmp_path / "out.slim")
    assert _left(tmp_path, ckpt.name) == []


def test_a_codec_that_decodes_to_nan_is_refused(tmp_path, ckpt, monkeypatch):
    real = encode.palette_stages

    def nan_codebook(*args, **kwargs):
        arrays, chain = real(*args, **kwargs)
        key = next(k for k in arrays if k.endswith("codebook"))
        arrays[key] = np.full_like(arrays[key], np.nan)
        return arrays, chain

    monkeypatch.setattr(encode, "palette_stages", nan_codebook)
    with pytest.raises(SlimError, match="decodes tensor .* to NaN/Inf values; it was not kept"):
        compress_checkpoint(ckpt, KMEANS, tmp_path / "out.slim")
    assert _left(tmp_path, ckpt.name) == []


def test_a_tensor_too_large_to_decode_is_refused_for_a_nan_scale(tmp_path, ckpt, tensors, monkeypatch):
    """Tensors over the run's decode bound are not decoded; their stored scales are checked instead."""
    real = encode.quantize_block

    def nan_scale(*args, **kwargs):
        codes, scale, zero = real(*args, **kwargs)
        return codes, torch.full_like(scale, float("nan")) if scale.numel() > 4 else scale, zero

    monkeypatch.setattr(encode, "quantize_block", nan_scale)
    with pytest.raises(SlimError, match="holds NaN/Inf values in array .*scale.* of a coded tensor; it was not kept"):
        compress_checkpoint(ckpt, "int4-rtn", tmp_path / "out.slim", block_bytes=1024)
    assert _left(tmp_path, ckpt.name) == []


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            bos_token_id=0, eos_token_id=0, architectures=["LlamaForCausalLM"])
    folder = tmp_path_factory.mktemp("llama")
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_python_scores_a_streamed_file_as_the_cli_does(llama, tmp_path):
    """`slimkit.stream.score_streamed`: the written file measured against its folder, from Python."""
    from slimkit.stream import score_streamed

    compress_layerwise(llama, "int4", tmp_path / "out.slim")
    result = score_streamed(llama, tmp_path / "out.slim", max_drop=1000)
    assert result["scored"] and result["score_name"] == "ppl_ratio" and result["not_scored"] is None
    assert result["baseline_score"] == 1.0 and 0 < result["score"] and result["within_budget"]
    assert result["drop"] == pytest.approx(100 * (result["baseline_score"] - result["score"]), abs=1e-3)
    assert result["metrics"]["perplexity"] > 1 and result["metrics"]["kl"] >= 0
    bare = score_streamed(tmp_path / "nowhere", tmp_path / "out.slim", max_drop=None)
    assert not bare["scored"] and bare["score"] is None and bare["not_scored"]


def test_block_by_block_file_is_verified_and_must_fit_its_architecture(llama, tmp_path, monkeypatch):
    report = compress_layerwise(llama, "int4", tmp_path / "ok.slim")
    assert report.verified["decoded"] == report.tensors and report.verified["not_decoded"] == 0
    real = layerwise.Manifest

    def other_base(**kwargs):   # the manifest names one more layer than the tensors written
        config = dict(kwargs["base"]["config"], num_hidden_layers=3)
        return real(**{**kwargs, "base": {**kwargs["base"], "config": config}})

    monkeypatch.setattr(layerwise, "Manifest", other_base)
    with pytest.raises(SlimError, match="does not fit the architecture it names"):
        compress_layerwise(llama, "int4", tmp_path / "bad.slim")
    assert _left(tmp_path) == ["ok.slim"]


def test_cli_refuses_a_streamed_file_that_does_not_read_back(monkeypatch, capsys, tmp_path, ckpt,
                                                             corrupt_before_commit):
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(ckpt), "--recipe", "int8",
                            "--out", str(out / "m.slim"))
    errors = [line for line in err.splitlines() if line.startswith("slimkit: error")]
    assert code == 2 and len(errors) == 1 and "it was not kept" in errors[0], err
    assert "Traceback" not in err and list(out.iterdir()) == []


def test_cli_bare_checkpoint_says_it_was_not_scored(monkeypatch, capsys, tmp_path, ckpt):
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(ckpt), "--recipe", "int8",
                            "--out", str(tmp_path / "a.slim"), "--json")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and result["scored"] is False and result["score"] is None
    assert "no architecture to run" in result["not_scored"] and result["within_budget"] is None
    assert result["verified"]["decoded"] == result["tensors"]
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(ckpt), "--recipe", "int8",
                            "--out", str(tmp_path / "b.slim"))
    assert code == 0 and "not scored: a bare checkpoint" in stdout + err
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(ckpt), "--recipe", "int8",
                            "--out", str(tmp_path / "c.slim"), "--max-drop", "1")
    assert code == 3 and "could not be scored" in err   # a budget was asked for and cannot be checked


@pytest.mark.parametrize("recipe", ["int8", "int4"])   # tensor by tensor / block by block
def test_cli_streamed_hf_score_is_measured_on_the_written_file(monkeypatch, capsys, tmp_path, llama, recipe):
    from slimkit.core.provenance import task_for

    out = tmp_path / "m.slim"
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(llama), "--recipe", recipe, "--stream",
                            "--out", str(out), "--json")
    result = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and result["scored"] is True, err
    assert result.get("streamed") == ("layerwise" if recipe == "int4" else None)
    task = task_for(sk.resolve(str(llama)))
    assert result["score"] == sk.evaluate(sk.load(out, runtime="torch"), task, timing=False).score
    assert result["baseline_score"] == sk.evaluate(sk.resolve(str(llama)), task, timing=False).score
    assert result["within_budget"] is (result["drop"] <= result["max_drop"])
    code, _, err = cli(monkeypatch, capsys, "compress", str(llama), "--recipe", recipe, "--stream",
                       "--out", str(tmp_path / "strict.slim"), "--max-drop", "0")
    assert code == (0 if result["drop"] <= 0 else 3)


def test_score_is_not_claimed_when_it_does_not_fit(llama, tmp_path):
    from slimkit.stream.score import score_streamed

    out = tmp_path / "m.slim"
    compress_checkpoint(llama, "int8", out)
    result = score_streamed(llama, out, None, memory=1 << 20)
    assert result["scored"] is False and result["score"] is None and result["within_budget"] is None
    assert "in memory together to be scored" in result["not_scored"]
