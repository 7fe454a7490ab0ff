"""`slimkit export F.slim --gguf OUT.gguf`: tiny random Llamas written as GGUF, read back with gguf's own
reader and dequantizer, and compared with the weights slimkit decodes (no llama.cpp needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slimkit as sk
from cli_runner import cli
from slimkit.core.errors import SlimError
from slimkit.export.gguf import decoded_weight, export_gguf, permute_qk, tensor_plan

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")


def tiny_llama(folder, tied: bool = True, seed: int = 0):
    """A 2-layer random LlamaForCausalLM (hidden 64, MLP 128, 4 query / 2 key-value heads) as an HF folder."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=tied, rope_theta=10000.0)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-llama")
    return {tied: tiny_llama(root / f"tied-{tied}", tied) for tied in (True, False)}


@pytest.fixture
def compressed(tmp_path, folders):
    """compressed(config, tied): the tiny Llama compressed with `config` (None: the float original), saved
    to tmp_path / "m.slim" and loaded back."""
    def make(config, tied=True):
        net = sk.resolve(str(folders[tied]))
        if config is not None:
            sk.quantize_(net, config)
        sk.save(net, tmp_path / "m.slim")
        return sk.load(tmp_path / "m.slim")
    return make


def unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of `permute_qk`: llama.cpp's row order back to Hugging Face's."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def read_back(path, model):
    """{GGUF name: (GGML type name, float32 weight in Hugging Face row order)} and the reader."""
    reader = gguf.GGUFReader(path)
    cfg = model.config
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        values = values.reshape([int(n) for n in reversed(t.shape)])
        kind = t.name.split(".")[-2]
        if kind in heads:
            values = unpermute(values, heads[kind])
        out[t.name] = (t.tensor_type.name, values)
    return out, reader


CASES = {   # name: (slimkit config, expected GGML type of the layers, how they get there)
    "float-f16": (None, "F16", "float"),
    "int8": (lambda: sk.Int8Config(), "Q8_0", "codes kept"),
    "rtn4-sym-g32": (lambda: sk.WeightOnlyConfig(bits=4, symmetric=True, group_size=32, embedding_bits=4,
                                                  embedding_group_size=32), "Q4_0", "exact"),
    "rtn3-sym-g64": (lambda: sk.WeightOnlyConfig(bits=3, symmetric=True, group_size=64), "Q4_0", "exact"),
    "rtn4-asym-g64": (lambda: sk.WeightOnlyConfig(bits=4, symmetric=False, group_size=64), "Q4_1", "codes kept"),
    "rtn8-sym": (lambda: sk.WeightOnlyConfig(bits=8, symmetric=True, granularity="channel"), "Q8_0", "exact"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_matches_slimkit_decoded_weights(tmp_path, compressed, case, tied):
    make, layer_type, how = CASES[case]
    model = compressed(make() if make else None, tied)
    report = export_gguf(model, tmp_path / "m.gguf")
    assert report["bytes"] == (tmp_path / "m.gguf").stat().st_size
    tensors, reader = read_back(tmp_path / "m.gguf", model)
    plan = tensor_plan(model, model.config)
    assert list(tensors) == [name for name, *_ in plan]
    assert ("output.weight" in tensors) is (not tied)
    assert 2 + 9 * 2 + (0 if tied else 1) == len(tensors)
    records = {r["name"]: r for r in report["tensors"]}
    for name, source, kind, _ in plan:
        qtype, values = tensors[name]
        want = decoded_weight(model.get_submodule(source), source).numpy()
        rec = records[name]
        assert rec["type"] == qtype
        err = float(np.abs(values - want).max())
        assert err == pytest.approx(rec["max_abs_err"], abs=1e-12)   # the report tells the truth
        if kind == "norm":
            assert qtype == "F32" and rec["how"] == "exact"
            np.testing.assert_array_equal(values, want)
            continue
        if name.startswith("blk."):
            assert (qtype, rec["how"]) == (layer_type, how)
        if rec["how"] == "exact":
            np.testing.assert_array_equal(values, want)
        else:   # codes kept with fp16-rounded scales / minimums, or fp16 floats: within fp16 rounding
            assert err <= np.abs(want).max() * 2.0**-10
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert fields["llama.rope.dimension_count"].contents() == 16
    assert fields["tokenizer.ggml.model"].contents() == "none"


def test_groups_smaller_than_a_block_are_requantized_and_reported(tmp_path, compressed):
    model = compressed(sk.WeightOnlyConfig(bits=4, symmetric=True, group_size=16))
    report = export_gguf(model, tmp_path / "m.gguf", qtype="q8_0")
    layers = [r for r in report["tensors"] if r["name"].startswith("blk.") and "norm" not in r["name"]]
    assert {(r["type"], r["how"]) for r in layers} == {("Q8_0", "re-quantized")}
    assert report["requantized"] == len(layers) + 1   # and the float embedding
    assert all(0 < r["max_abs_err"] < 0.01 for r in layers)
    tensors, _ = read_back(tmp_path / "m.gguf", model)
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    np.testing.assert_allclose(tensors["blk.0.attn_q.weight"][1], decoded_weight(q, "q").numpy(), atol=0.01)


def test_float_model_requantized_to_q4_0(tmp_path, compressed):
    model = compressed(None)
    report = export_gguf(model, tmp_path / "m.gguf", qtype="q4_0")
    assert report["types"] == {"Q4_0": 15, "F32": 5}
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_0)


def test_qk_permutation_turns_hf_rope_into_llama_cpp_rope():
    """llama.cpp rotates adjacent pairs (x[2i], x[2i+1]); Hugging Face Llama rotates the two halves of each
    head. With q_proj's rows permuted as `permute_qk` does, llama.cpp's rotation of the permuted output is
    the permuted Hugging Face rotation, at every position."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    heads, dim, theta = 3, 8, 10000.0
    w = torch.randn(heads * dim, 24, dtype=torch.float64)
    x = torch.randn(5, 24, dtype=torch.float64)
    pos = torch.arange(5, dtype=torch.float64)
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = pos[:, None] * inv[None, :]                                   # (positions, dim / 2)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    q = (x @ w.T).reshape(5, heads, dim).transpose(0, 1)[None]          # (1, heads, positions, dim)
    hf, _ = apply_rotary_pos_emb(q, q, cos[None], sin[None])
    hf = hf[0].transpose(0, 1).reshape(5, heads * dim)
    wp = torch.from_numpy(permute_qk(w.numpy(), heads))
    qp = (x @ wp.T).reshape(5, heads, dim // 2, 2)                       # llama.cpp: adjacent pairs
    c, s = ang.cos()[:, None, :], ang.sin()[:, None, :]
    a, b = qp[..., 0], qp[..., 1]
    cpp = torch.stack([a * c - b * s, a * s + b * c], -1).reshape(5, heads * dim)
    want = torch.from_numpy(permute_qk(hf.T.numpy(), heads)).T        # Hugging Face's result, rows permuted
    torch.testing.assert_close(cpp, want)


def test_non_llama_models_are_refused(tmp_path):
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=16, vocab_size=50)
    with pytest.raises(SlimError, match="Llama-family"):
        export_gguf(transformers.GPT2LMHeadModel(config), tmp_path / "m.gguf")
    with pytest.raises(SlimError, match="Llama-family"):
        export_gguf(torch.nn.Linear(4, 4), tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_write_is_atomic(tmp_path, compressed, monkeypatch):
    model = compressed(sk.Int8Config())
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(SlimError, match="already exists"):
        export_gguf(model, out, overwrite=False)
    assert out.read_bytes() == b"keep me"

    def broken(self, *args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(model, out)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.slim"]   # no temporary file left


def test_cli_writes_and_refuses(tmp_path, compressed, monkeypatch, capsys):
    compressed(sk.Int8Config())
    code, out, err = cli(monkeypatch, capsys, "export", str(tmp_path / "m.slim"), "--gguf", str(tmp_path / "m.gguf"))
    assert code == 0, err
    assert "Q8_0" in out and "codes kept" in out and (tmp_path / "m.gguf").stat().st_size > 0
    code, out, err = cli(monkeypatch, capsys, "export", str(tmp_path / "m.slim"), "--gguf", str(tmp_path / "m.gguf"),
                         "--json", "--force", "--gguf-type", "q4_0")
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and report["codes_kept"] == 15   # --gguf-type is for what keeps no codes; tied: no output
    assert report["types"] == {"Q8_0": 15, "F32": 5}
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=16, vocab_size=50)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    for args, message in [((str(tmp_path / "gpt2"), "--gguf", str(tmp_path / "g.gguf")), "GGUF export supports Llama"),
                          ((str(tmp_path / "m.slim"), "--gguf", str(tmp_path / "g.gguf"), "--gguf-type", "q3"),
                           "--gguf-type must be one of"),
                          ((str(tmp_path / "m.slim"),), "give exactly one of --onnx")]:
        code, out, err = cli(monkeypatch, capsys, "export", *args)
        assert code == 2
        assert err.strip().splitlines()[-1].startswith(f"slimkit: error: {message}")
    assert not (tmp_path / "g.gguf").exists()


@pytest.mark.slow
def test_smollm2_f32_export_gives_back_the_original_gguf(tmp_path):
    """builtin:smollm2 is dequantized from a GGUF file: written back as F32 with llama.cpp's names and Q/K
    row order, every tensor equals the original file's (dequantized) tensor, and the tokenizer is copied."""
    from slimkit.zoo.smollm2 import gguf_path

    report = export_gguf(sk.zoo.load("smollm2"), tmp_path / "s.gguf", qtype="f32")
    assert report["types"] == {"F32": 272} and report["tokenizer"] == str(gguf_path())
    original, mine = gguf.GGUFReader(gguf_path()), gguf.GGUFReader(tmp_path / "s.gguf")
    theirs = {t.name: t for t in mine.tensors}
    assert sorted(theirs) == sorted(t.name for t in original.tensors)
    for t in original.tensors:
        np.testing.assert_array_equal(gguf.quants.dequantize(theirs[t.name].data, theirs[t.name].tensor_type),
                                      gguf.quants.dequantize(t.data, t.tensor_type), err_msg=t.name)
    for key, field in original.fields.items():
        if key.startswith(("llama.", "tokenizer.", "general.")) and key != "general.file_type":
            assert mine.fields[key].contents() == field.contents(), key
