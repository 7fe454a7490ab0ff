"""int8 runtime compute dtype: bf16 activations (W8A16 linears) vs the fp32 integer path.

The file never changes with the mode (same codes and scales); only how the model runs does.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit as sk
from slimkit.io.artifact import load_state_dict, read_manifest
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import Int8Linear, fast_bf16, forced_compute_dtype, resolve_compute_dtype
from slimkit.quantization.api import Int8Config
from slimkit.quantization.convert import low_precision_blockers


def tiny_bert(attn: str = "eager", seed: int = 0) -> nn.Module:
    """A random BertModel of MiniLM's shape, 2 blocks of width 32."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    config._attn_implementation = attn
    return transformers.BertModel(config).eval()


def bert_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hidden(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).last_hidden_state


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float().flatten(0, 1), b.float().flatten(0, 1), dim=-1)


def quantized(model: nn.Module, mode: str, data=None) -> nn.Module:
    q = copy.deepcopy(model)
    sk.quantize_(q, Int8Config(compute_dtype=mode), data=data)
    return q


class _Tokens:
    """The smallest task a trial forward needs: example inputs and a forward."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def example_inputs(self, batch_size: int) -> dict:
        return {k: v[:batch_size] for k, v in bert_inputs().items()}

    def forward(self, model: nn.Module, batch: dict):
        if self.fail:
            raise RuntimeError("mat1 and mat2 must have the same dtype")
        return model(**batch)


# ----------------------------------------------------------------------------- the modules

def test_int8_linear_bf16_inputs_run_w8a16_close_to_the_integer_path(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(3, 5, 96)
    fp32_path = q(x)
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(1) or real(a, b))
    low = q(x.bfloat16())
    assert low.dtype == torch.bfloat16 and low.shape == fp32_path.shape
    assert calls == [], "bf16 inputs take the W8A16 path, not _int_mm"
    ref = F.linear(x.bfloat16(), q.dequantized_weight().bfloat16(), lin.bias.detach().bfloat16())
    assert torch.equal(low, ref)
    rel = (low.float() - fp32_path).norm() / fp32_path.norm()
    assert rel < 0.02, f"bf16 path is {rel:.4f} away from the fp32 integer path"
    assert "W8A16" in repr(q)


def test_int8_linear_bf16_cache_follows_weight_changes():
    q = Int8Linear.from_linear(nn.Linear(16, 8))
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    first = q(x)
    cached = q._low_cache.value[0]
    assert torch.equal(q(x), first) and q._low_cache.value[0] is cached   # reused
    with torch.no_grad():
        q.qweight.neg_()
    assert torch.allclose(q(x).float(), -(first.float() - q.bias.float()) + q.bias.float(), atol=0.05)


def test_embedding_compute_dtype_sets_output_dtype(monkeypatch):
    emb = nn.Embedding(50, 24)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    outs = {m: QuantEmbedding.from_embedding(emb, compute_dtype=m)(ids)
            for m in ("float32", "bfloat16", "float16")}
    assert [o.dtype for o in outs.values()] == [torch.float32, torch.bfloat16, torch.float16]
    assert torch.equal(outs["bfloat16"], outs["float32"].bfloat16())
    auto = QuantEmbedding.from_embedding(emb, compute_dtype="auto")
    monkeypatch.delenv("SLIMKIT_COMPUTE_DTYPE", raising=False)   # "auto" as this CPU decides it
    assert auto(ids).dtype == (torch.bfloat16 if fast_bf16() else torch.float32)
    monkeypatch.setenv("SLIMKIT_COMPUTE_DTYPE", "float32")
    assert auto(ids).dtype == torch.float32 and "compute_dtype=auto (float32 here)" in repr(auto)
    monkeypatch.setenv("SLIMKIT_COMPUTE_DTYPE", "bfloat16")
    assert auto(ids).dtype == torch.bfloat16 and resolve_compute_dtype("float32") == torch.float32
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        QuantEmbedding(10, 4, compute_dtype="int8")


def test_model_casts_set_the_compute_dtype_and_device_moves_do_not():
    q = quantized(tiny_bert(), "float32")
    x = bert_inputs()
    emb = q.embeddings.word_embeddings
    q.to("cpu")
    assert emb.compute_dtype == "float32"
    out = hidden(q.to(torch.bfloat16), x)          # failed before: fp32 embeddings into bf16 LayerNorm
    assert emb.compute_dtype == "bfloat16" and out.dtype == torch.bfloat16
    assert hidden(q.float(), x).dtype == torch.float32 and emb.compute_dtype == "float32"
    assert token_cosine(out, hidden(q, x)).min() > 0.99


def test_int8_config_rejects_unknown_compute_dtype():
    with pytest.raises(ValueError, match="compute_dtype"):
        Int8Config(compute_dtype="fp8")


# ----------------------------------------------------------------------------- a tiny BERT end to end

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tiny_bert_bf16_compute_is_close_to_fp32_compute(attn):
    model = tiny_bert(attn)
    x = bert_inputs()
    ref = hidden(model, x)
    q32, q16 = quantized(model, "float32"), quantized(model, "bfloat16")
    out32, out16 = hidden(q32, x), hidden(q16, x)
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    with forced_compute_dtype("float32"):
        assert torch.equal(hidden(q16, x), out32), "forced fp32 runs the integer path of the same weights"
    assert token_cosine(out16, out32).min() > 0.995
    assert token_cosine(out16, ref).mean() > 0.995 and token_cosine(out32, ref).mean() > 0.995
    assert "compute_dtype=bfloat16" in repr(q16.embeddings.word_embeddings)


@pytest.mark.parametrize("mode", ["auto", "float32", "bfloat16"])
def test_round_trip_keeps_the_mode_and_the_file_holds_the_same_tensors(mode, tmp_path):
    model = tiny_bert()
    x = bert_inputs()
    q = quantized(model, mode, data=_Tokens())
    path = tmp_path / f"{mode}.slim"
    sk.save(q, path)
    loaded = sk.load(path, model=tiny_bert(seed=5), runtime="torch")
    assert loaded.embeddings.word_embeddings.compute_dtype == mode
    assert torch.equal(hidden(loaded, x), hidden(q, x))
    ref_path = tmp_path / "ref.slim"
    sk.save(quantized(model, "float32"), ref_path)
    mine, ref = load_state_dict(path), load_state_dict(ref_path)
    assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref)
    specs = [e["spec"] for e in read_manifest(ref_path).edits if e.get("spec", {}).get("type") == "QuantEmbedding"]
    assert specs and all("compute_dtype" not in s for s in specs), "float32 files keep the old manifest"


def test_auto_stays_float32_when_a_float_linear_remains(caplog):
    model = tiny_bert()
    q = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="slimkit.quantization"):
        sk.quantize_(q, Int8Config(ignore=["pooler.dense"]))
    assert low_precision_blockers(q) == {"pooler.dense": "Linear"}
    assert q.embeddings.word_embeddings.compute_dtype == "float32"
    assert "pooler.dense (Linear)" in caplog.text
    assert hidden(q, bert_inputs()).dtype == torch.float32


def test_auto_stays_float32_when_the_bf16_trial_forward_fails():
    q = quantized(tiny_bert(), "auto", data=_Tokens(fail=True))
    assert q.embeddings.word_embeddings.compute_dtype == "float32"
    assert not any(hasattr(m, "_low_cache") for m in q.modules()), "trial caches are dropped"
    ok = quantized(tiny_bert(), "auto", data=_Tokens())
    assert ok.embeddings.word_embeddings.compute_dtype == "auto"


@pytest.mark.slow
def test_minilm_int8_fidelity_in_both_compute_dtypes(tmp_path):
    """Real MiniLM, held-out pydoc sentences: both runtimes of one int8 file stay >= 0.995."""
    from slimkit.zoo.minilm import minilm_task

    task = minilm_task()
    model = sk.zoo.load("minilm")
    sk.quantize_(model, Int8Config(compute_dtype="bfloat16"), data=task)
    sk.save(model, tmp_path / "m.slim")
    loaded = sk.load(tmp_path / "m.slim")
    assert loaded.embeddings.word_embeddings.compute_dtype == "bfloat16"
    with torch.inference_mode():
        low = task.score(loaded)
        with forced_compute_dtype("float32"):
            full = task.score(loaded)
    assert low >= 0.995 and full >= 0.995, (low, full)
