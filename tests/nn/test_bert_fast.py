"""The fast bf16 forward of int8 BERT-style layers: same outputs as Hugging Face's forward (up to bf16
rounding), installed by quantize_ and load, and Hugging Face's forward wherever it does not apply."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit as sk
from slimkit.nn import bert_fast
from slimkit.nn.bert_fast import install_fast_layers, recognised
from slimkit.quantization.api import Int8Config


def tiny_bert(attn: str = "eager") -> nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    config._attn_implementation = attn
    return transformers.BertModel(config).eval()


def inputs(mask: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (4, 12), generator=g)
    am = torch.ones_like(ids)
    if mask:
        am[0, 7:] = 0
        am[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": am}


def int8(model: nn.Module, mode: str = "bfloat16") -> nn.Module:
    return sk.quantize_(copy.deepcopy(model), Int8Config(compute_dtype=mode))


def plain(model: nn.Module) -> nn.Module:
    """A copy that runs Hugging Face's own layer forward."""
    out = copy.deepcopy(model)
    for layer in out.modules():
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop(bert_fast._MARK, None)
    return out


def hidden(model: nn.Module, x: dict, **kw) -> torch.Tensor:
    with torch.inference_mode():
        return model(**x, **kw).last_hidden_state


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest per-token cosine similarity between two (batch, tokens, dim) outputs."""
    return F.cosine_similarity(a.float().flatten(0, 1), b.float().flatten(0, 1), dim=-1).min().item()


def count_fast_calls(monkeypatch) -> list:
    calls: list = []
    real = bert_fast._fast
    monkeypatch.setattr(bert_fast, "_fast", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mask", [True, False])
def test_fast_layers_match_the_hugging_face_forward(monkeypatch, attn, mask):
    q = int8(tiny_bert(attn))
    assert install_fast_layers(q) == 2 and all(recognised(layer) for layer in q.encoder.layer)
    x = inputs(mask)
    calls = count_fast_calls(monkeypatch)
    fast = hidden(q, x)
    assert len(calls) == 2 and fast.dtype == torch.bfloat16
    ref = hidden(plain(q), x)
    assert fast.shape == ref.shape
    assert close(fast, ref) > 0.999, "every position, padded ones included, is the same function"
    assert (fast.float() - ref.float()).abs().max() < 0.1


def test_plain_linear_fallback_matches_onednn(monkeypatch):
    q = int8(tiny_bert())
    x = inputs()
    fused = hidden(q, x)
    monkeypatch.setattr(bert_fast, "_onednn", lambda: False)
    other = int8(tiny_bert())
    assert close(hidden(other, x), fused) > 0.999
    assert all(w.packed is None for w in other.encoder.layer[0].__dict__[bert_fast._CACHE].value.values())


def test_fp32_runtime_grad_and_hooks_take_the_hugging_face_forward(monkeypatch):
    x = inputs()
    q32 = int8(tiny_bert(), "float32")
    calls = count_fast_calls(monkeypatch)
    assert torch.equal(hidden(q32, x), hidden(plain(q32), x)), "fp32 activations: the integer path, unchanged"
    q = int8(tiny_bert())
    out = q(**x).last_hidden_state                   # grad mode, bias requires grad: HF forward
    assert out.requires_grad and calls == []
    with torch.inference_mode():
        att = q(**x, output_attentions=True).attentions
    assert att is not None and len(att) == 2 and att[0].shape == (4, 4, 12, 12)
    with torch.inference_mode():
        states = q(**x, output_hidden_states=True).hidden_states
    assert len(states) == 3 and len(calls) == 2, "recording layer outputs keeps the fast path"
    assert torch.equal(states[-1], hidden(q, x))
    calls.clear()
    seen = []
    q.encoder.layer[1].intermediate.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    hidden(q, x)
    assert seen == [(4, 12, 64)] and len(calls) == 1, "a hook on a fused sub-module keeps that layer on HF's forward"


def test_only_int8_bert_layers_are_recognised():
    import transformers

    assert install_fast_layers(tiny_bert()) == 0, "float linears keep HF's forward"
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                                          n_positions=32)).eval()
    q = sk.quantize_(gpt2, Int8Config())           # auto: its Conv1D layers stay float
    assert install_fast_layers(q) == 0
    assert hidden(q, {"input_ids": inputs()["input_ids"]}).shape == (4, 12, 32)


def test_env_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("SLIMKIT_FAST_LAYERS", "0")
    q = int8(tiny_bert())
    assert install_fast_layers(q) == 0 and "forward" not in q.encoder.layer[0].__dict__


def test_saved_and_loaded_model_gets_the_fast_layers(tmp_path, monkeypatch):
    q = int8(tiny_bert())
    x = inputs()
    before = hidden(q, x)
    path = tmp_path / "b.slim"
    sk.save(q, path)
    loaded = sk.load(path, model=tiny_bert(), runtime="torch")
    assert install_fast_layers(loaded) == 2 and "forward" not in loaded.state_dict()
    calls = count_fast_calls(monkeypatch)
    assert torch.equal(hidden(loaded, x), before) and len(calls) == 2


def test_deepcopy_and_weight_changes_repack():
    q = int8(tiny_bert())
    x = inputs()
    first = hidden(q, x)
    twin = copy.deepcopy(q)
    assert twin.encoder.layer[0].__dict__[bert_fast._CACHE].value is None, "packed weights are not copied"
    assert torch.equal(hidden(twin, x), first)
    with torch.no_grad():
        twin.encoder.layer[0].intermediate.dense.qweight.zero_()
    changed = hidden(twin, x)
    assert not torch.equal(changed, first)
    assert close(changed, hidden(plain(twin), x)) > 0.999
    assert torch.equal(hidden(q, x), first), "the original keeps its own weights"
    pickled = pickle.loads(pickle.dumps(q))
    assert torch.equal(hidden(pickled, x), first) and pickled.encoder.layer[0].forward.layer is pickled.encoder.layer[0]


def test_a_failing_kernel_turns_the_layer_off_with_a_warning(monkeypatch, caplog):
    q = int8(tiny_bert())
    x = inputs()
    ref = hidden(plain(q), x)

    def broken(*args):
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(bert_fast, "_attention", broken)
    with caplog.at_level("WARNING", logger="slimkit"):
        out = hidden(q, x)
    assert torch.equal(out, ref)
    assert "fast BERT layer off" in caplog.text and install_fast_layers(q) == 0


def test_skip_padding_keeps_real_tokens_and_zeros_padded_ones(monkeypatch):
    from slimkit.nn.bert_fast import skip_padding
    from slimkit.zoo.embedding_task import mean_pool

    q = int8(tiny_bert())
    x = inputs()
    full = hidden(q, x)
    assert skip_padding(q) == 2
    calls = count_fast_calls(monkeypatch)
    packed = hidden(q, x)
    real = x["attention_mask"].bool()
    assert len(calls) == 2
    assert close(packed[real][None], full[real][None]) > 0.9999
    assert torch.count_nonzero(packed[~real]) == 0, "padded positions are zeros"
    pooled = F.cosine_similarity(mean_pool(packed, x["attention_mask"]), mean_pool(full, x["attention_mask"]))
    assert pooled.min() > 0.9999
    unpadded = inputs(mask=False)
    assert torch.equal(hidden(q, unpadded), hidden(int8(tiny_bert()), unpadded)), "no padding: nothing to skip"
    assert skip_padding(q, False) == 2 and torch.equal(hidden(q, x), full)


def test_skip_padding_env_switch(monkeypatch):
    monkeypatch.setenv("SLIMKIT_SKIP_PADDING", "1")
    q = int8(tiny_bert())
    x = inputs()
    assert torch.count_nonzero(hidden(q, x)[~x["attention_mask"].bool()]) == 0
