"""The pretrained MiniLM zoo entry and generic Hugging Face folders (load, rebuild, errors)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from slimkit.core.errors import SlimError
from slimkit.zoo import entry
from slimkit.zoo.hf import build_from_base, load_hf_folder
from slimkit.zoo.minilm import model_path


@pytest.fixture(scope="module")
def minilm():
    return entry("minilm").load()


def _inputs(vocab: int, batch: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 7:] = 0                                   # one padded sentence
    return {"input_ids": ids, "attention_mask": mask}


def _hidden(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def test_import_stays_light():
    code = ("import sys, slimkit.zoo, slimkit.zoo.minilm, slimkit.zoo.hf, slimkit.zoo.embedding_task; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_is_the_pretrained_encoder(minilm):
    assert entry("all-minilm-l6-v2") is entry("minilm")
    assert type(minilm).__name__ == "BertModel"
    assert minilm.slimkit_base == {"kind": "zoo", "name": "minilm"}
    assert not minilm.training
    assert all(p.dtype == torch.float32 for p in minilm.parameters())
    assert 22_000_000 < sum(p.numel() for p in minilm.parameters()) < 23_500_000
    assert minilm.config.num_hidden_layers == 6 and minilm.config.hidden_size == 384
    assert minilm.config._attn_implementation == "eager"
    assert not torch.all(minilm.embeddings.LayerNorm.weight == 1), "pretrained, not freshly initialised"


def test_build_plus_state_equals_load(minilm):
    built = entry("minilm").build()
    assert built.slimkit_base == {"kind": "zoo", "name": "minilm"}
    assert not built.training and built.config._attn_implementation == "eager"
    built.load_state_dict(minilm.state_dict())
    inputs = _inputs(minilm.config.vocab_size)
    assert torch.equal(_hidden(built, inputs), _hidden(minilm, inputs))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A randomly initialised 2-layer BERT (hidden 32) saved with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(model_path() / name, folder / name)
    return folder


def test_load_hf_folder_and_rebuild(tiny_folder):
    model = load_hf_folder(tiny_folder)
    base = model.slimkit_base
    assert base["kind"] == "hf" and base["path"] == str(tiny_folder.resolve())
    assert base["config"]["model_type"] == "bert" and base["config"]["hidden_size"] == 32
    assert not model.training and model.config._attn_implementation == "eager"
    stored = json.loads(json.dumps(base))             # what a .slim manifest keeps
    built = build_from_base(stored)
    assert built.slimkit_base == stored
    assert built.config.num_hidden_layers == 2 and not built.training
    inputs = _inputs(30522)
    assert not torch.allclose(_hidden(built, inputs), _hidden(model, inputs))
    built.load_state_dict(model.state_dict())
    assert torch.equal(_hidden(built, inputs), _hidden(model, inputs))


def test_load_hf_folder_errors(tmp_path, tiny_folder):
    cases = {"missing": tmp_path / "nope"}
    (tmp_path / "file.txt").write_text("x")
    cases["file"] = tmp_path / "file.txt"
    cases["no-config"] = tmp_path / "empty"
    cases["no-config"].mkdir()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_folder / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    cases["bin-only"] = pickled
    bad = tmp_path / "bad-config"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-model"}')
    shutil.copy(tiny_folder / "model.safetensors", bad / "model.safetensors")
    cases["bad-config"] = bad
    broken = tmp_path / "broken-json"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    shutil.copy(tiny_folder / "model.safetensors", broken / "model.safetensors")
    cases["broken-json"] = broken
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_folder / "config.json", partial / "config.json")
    tensors = load_file(tiny_folder / "model.safetensors")
    dropped = next(k for k in tensors if "layer.1.attention" in k)
    save_file({k: v for k, v in tensors.items() if k != dropped}, partial / "model.safetensors",
              metadata={"format": "pt"})
    cases["missing-weights"] = partial
    for name, path in cases.items():
        with pytest.raises(SlimError) as info:
            load_hf_folder(path)
        assert "\n" not in str(info.value), name


@pytest.mark.parametrize("base", [
    {"kind": "zoo", "name": "minilm"},
    {"kind": "hf", "path": "x"},
    {"kind": "hf", "config": {"hidden_size": 32}},
    {"kind": "hf", "config": {"model_type": "no-such-model"}},
])
def test_build_from_base_errors(base):
    with pytest.raises(SlimError):
        build_from_base(base)


def test_minilm_slim_round_trip_is_exact_and_keeps_hf_inputs(minilm, tmp_path):
    import slimkit as sk

    path = tmp_path / "minilm.slim"
    size = sk.save(minilm, path)
    assert abs(size - 90_864_160) < 64 * 1024  # the fp32 weights plus a manifest
    loaded = sk.load(path, runtime="torch")
    assert type(loaded) is type(minilm)
    inputs = _inputs(minilm.config.vocab_size)
    with torch.no_grad():
        ours = loaded(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        theirs = minilm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
