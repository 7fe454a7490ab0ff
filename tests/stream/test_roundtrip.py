"""Each streaming method round-trips within its error bound; the file holds what is expected."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.io.artifact import read_raw
from slimkit.io.codecs import encode_chain
from slimkit.stream import StreamPlan, compress_checkpoint
from slimkit.stream.plan import KMeansSpec, QuantSpec

COMPRESSIBLE = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.up_proj.weight",
                "model.layers.0.mlp.down_proj.weight", "conv.weight", "lm_head.weight"]
KEPT = ["model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.bias", "position_ids", "mask"]


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(t.shape[0], -1)


def _check_kept(back, tensors):
    for k in KEPT:
        assert back[k].dtype == tensors[k].dtype and torch.equal(back[k], tensors[k]), k


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (3, 16)])
def test_rtn_error_within_half_a_step(tmp_path, ckpt, tensors, bits, group):
    plan = StreamPlan(quant=QuantSpec(bits, group_size=group, scale_dtype="float32"),
                      embedding_quant=QuantSpec(bits, group_size=group))
    report = compress_checkpoint(ckpt, plan, tmp_path / "q.slim")
    back = sk.load_state_dict(tmp_path / "q.slim")
    assert set(back) == set(tensors) and report.tensors == len(tensors)
    _check_kept(back, tensors)
    for k in COMPRESSIBLE:
        w, w_hat = _rows(tensors[k]), _rows(back[k])
        assert back[k].dtype == tensors[k].dtype and back[k].shape == tensors[k].shape
        g = group if group and w.shape[1] % group == 0 else w.shape[1]
        step = w.reshape(w.shape[0], -1, g).abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        err = (w - w_hat).reshape(w.shape[0], -1, g).abs()
        # half a step, plus the rounding of bf16/fp16 outputs
        slack = 0.01 * w.abs().amax() if tensors[k].dtype != torch.float32 else 1e-6
        assert (err <= step / 2 + slack).all(), k
        assert not torch.equal(w, w_hat), k


def test_int8_file_bytes_as_expected(tmp_path, ckpt, tensors):
    """One byte per weight + a float32 scale per row; small and non-float tensors as they are."""
    report = compress_checkpoint(ckpt, "int8", tmp_path / "q.slim")
    expected = 0
    for k, t in tensors.items():
        if k in COMPRESSIBLE:
            expected += t.numel() + t.shape[0] * 4
        else:
            expected += t.numel() * t.element_size()
    size = (tmp_path / "q.slim").stat().st_size
    header = int.from_bytes((tmp_path / "q.slim").read_bytes()[:8], "little")
    assert size == report.bytes == 8 + header + expected
    fp32 = sum(tensors[k].numel() * 4 for k in COMPRESSIBLE)
    int8 = sum(tensors[k].numel() + tensors[k].shape[0] * 4 for k in COMPRESSIBLE)
    assert 3.5 < fp32 / int8 < 4.0
    assert report.stored == {"int8 per-row": len(COMPRESSIBLE), "copied": len(KEPT)}


def test_streamed_arrays_equal_encode_chain(tmp_path, ckpt, tensors):
    """Block-by-block encoding stores exactly what the in-memory codec chain stores."""
    plan = StreamPlan(quant=QuantSpec(4, symmetric=False, group_size=16, scale_dtype="float16"))
    compress_checkpoint(ckpt, plan, tmp_path / "q.slim", block_bytes=1024)  # many blocks per tensor
    arrays, manifest = read_raw(tmp_path / "q.slim")
    name = "model.layers.0.mlp.up_proj.weight"
    chain = [{"codec": "affine", "bits": 4, "symmetric": False, "group_size": 16, "scale_dtype": "float16"},
             {"codec": "bitpack", "bits": 4}]
    stored, stages = encode_chain(tensors[name].numpy(), chain)
    assert manifest["tensors"][name]["chain"] == stages
    assert np.array_equal(arrays[name], stored["data"])
    assert np.array_equal(arrays[f"{name}::0.scale"], stored["0.scale"])
    assert np.array_equal(arrays[f"{name}::0.zero"], stored["0.zero"])


@pytest.mark.parametrize("coding", ["huffman", "bitpack"])
def test_kmeans_codebook_and_error(tmp_path, ckpt, tensors, coding):
    plan = StreamPlan(kmeans=KMeansSpec(4, coding=coding))
    compress_checkpoint(ckpt, plan, tmp_path / "k.slim")
    back = sk.load_state_dict(tmp_path / "k.slim")
    _check_kept(back, tensors)
    for k in COMPRESSIBLE:
        w, w_hat = tensors[k].float(), back[k].float()
        assert w_hat.unique().numel() <= 16, k
        rel_rms = ((w - w_hat).pow(2).mean() / w.pow(2).mean()).sqrt()
        assert rel_rms < 0.15, (k, float(rel_rms))   # 16 levels on a Gaussian: ~0.1
    bf16 = "model.layers.0.self_attn.o_proj.weight"
    assert back[bf16].dtype == torch.float32   # codebooks of bfloat16 tensors are float32


@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
def test_magnitude_keeps_the_largest(tmp_path, ckpt, tensors, value_dtype):
    compress_checkpoint(ckpt, StreamPlan(sparsity=0.75, value_dtype=value_dtype), tmp_path / "p.slim")
    back = sk.load_state_dict(tmp_path / "p.slim")
    _check_kept(back, tensors)
    for k in COMPRESSIBLE:
        w, w_hat = tensors[k], back[k]
        assert w_hat.dtype == w.dtype
        kept = w_hat != 0
        assert kept.sum().item() == w.numel() - round(0.75 * w.numel()), k
        assert w.abs()[kept].min() >= w.abs()[~kept].max(), k
        tol = 1e-3 if value_dtype == "float16" and w.dtype == torch.float32 else 0
        assert torch.allclose(w_hat[kept].float(), w[kept].float(), rtol=tol, atol=0), k


def test_prune_then_kmeans(tmp_path, ckpt, tensors):
    plan = StreamPlan(sparsity=0.8, kmeans=KMeansSpec(4, coding="bitpack"))
    report = compress_checkpoint(ckpt, plan, tmp_path / "dc.slim")
    back = sk.load_state_dict(tmp_path / "dc.slim")
    w, w_hat = tensors["lm_head.weight"], back["lm_head.weight"]
    threshold = w.abs().flatten().kthvalue(round(0.8 * w.numel())).values
    assert ((w_hat != 0) == (w.abs() > threshold)).float().mean() > 0.99
    assert w_hat[w_hat != 0].unique().numel() <= 16
    fp32 = sum(tensors[k].numel() * tensors[k].element_size() for k in COMPRESSIBLE)
    assert report.bytes < fp32 / 8


def test_lazy_decodes_only_what_is_asked(tmp_path, ckpt, tensors):
    compress_checkpoint(ckpt, "int8", tmp_path / "q.slim")
    eager = sk.load_state_dict(tmp_path / "q.slim")
    with sk.load_state_dict(tmp_path / "q.slim", lazy=True) as lazy:
        assert set(lazy) == set(tensors) and len(lazy) == len(tensors) and lazy.decoded == 0
        assert lazy.shape("lm_head.weight") == [96, 64] and lazy.decoded == 0
        assert torch.equal(lazy["lm_head.weight"], eager["lm_head.weight"])
        assert torch.equal(lazy["mask"], tensors["mask"])
        assert lazy.decoded == 2
        with pytest.raises(KeyError):
            lazy["nope"]
    with pytest.raises(sk.SlimError, match="closed"):
        lazy["lm_head.weight"]


def test_load_rebuilds_a_weights_only_module(tmp_path, ckpt, tensors):
    compress_checkpoint(ckpt, "int8", tmp_path / "q.slim")
    model = sk.load(tmp_path / "q.slim")
    state = model.state_dict()
    assert set(state) == set(tensors)
    assert math.isclose(float(state["lm_head.weight"].float().std()), float(tensors["lm_head.weight"].std()),
                        rel_tol=0.02)
    assert sk.read_manifest(tmp_path / "q.slim").info["streamed"] is True


def test_keep_largest_matches_magnitude_masks_with_ties():
    from slimkit.pruning.masks import magnitude_masks
    from slimkit.stream.encode import keep_largest

    w = torch.randint(-4, 5, (37, 29)).float()   # many exact ties
    for sparsity in (0.0, 0.3, 0.5, 0.77, 0.95):
        expected = magnitude_masks({"w": w}, sparsity)["w"]
        assert torch.equal(keep_largest(w, round(sparsity * w.numel())), expected), sparsity


@pytest.mark.parametrize("coding", ["auto", "ans"])
def test_kmeans_entropy_coders_and_the_size_cap(tmp_path, ckpt, tensors, coding, monkeypatch):
    import slimkit.stream.encode as enc

    compress_checkpoint(ckpt, StreamPlan(kmeans=KMeansSpec(3, coding=coding)), tmp_path / "a.slim")
    monkeypatch.setattr(enc, "ENTROPY_MAX_VALUES", 100)   # every tensor is over the cap: bit-packed
    compress_checkpoint(ckpt, StreamPlan(kmeans=KMeansSpec(3, coding=coding)), tmp_path / "b.slim")
    a, b = sk.load_state_dict(tmp_path / "a.slim"), sk.load_state_dict(tmp_path / "b.slim")
    assert all(torch.equal(a[k], b[k]) for k in a)
    chains = {k: [s["codec"] for s in e.chain] for k, e in sk.read_manifest(tmp_path / "b.slim").tensors.items()}
    assert chains["lm_head.weight"] == ["palette", "bitpack"]
    first = [s["codec"] for s in sk.read_manifest(tmp_path / "a.slim").tensors["lm_head.weight"].chain]
    assert first[0] == "palette" and first[1] in ("huffman", "ans")
