"""Causal LMs from Hugging Face folders (tiny random Llama, GPT-2, Qwen2): compressed, saved, loaded back as the
same *ForCausalLM class with its head; logits and generate() as the compressed model in memory; a tied head
stored once; GPT-2's Conv1D layers compressed by every method."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit as sk
from slimkit.io.artifact import read_raw
from slimkit.nn.tied_head import TiedLMHead
from slimkit.zoo.hf import CAUSAL_LM, head_of
from slimkit.zoo.lm_task import lm_task
from tiny_lm import ARCHS, TIED, VOCAB, save_causal_lm

METHODS = {
    "int8": {"method": "int8"},
    "magnitude": {"method": "magnitude", "sparsity": 0.5},
    "kmeans": {"method": "kmeans", "bits": 4, "finetune_epochs": 0},
}
SENTENCES = [f"Sentence number {i} says something about small language models." for i in range(64)]
CONV1D = ("transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
          "transformer.h.1.mlp.c_proj")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {arch: save_causal_lm(arch, tmp_path_factory.mktemp(f"lm-{arch}")) for arch in ARCHS}


@pytest.fixture(scope="module")
def originals(folders):
    return {arch: sk.resolve(str(folder)) for arch, folder in folders.items()}


def _fresh(model):
    twin = copy.deepcopy(model)
    twin.__dict__["slimkit_base"] = dict(model.slimkit_base)
    twin.__dict__.pop("slimkit_edits", None)
    return twin


def _prompt() -> torch.Tensor:
    return torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _generate(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                              do_sample=False, pad_token_id=0, **kwargs)


def test_causal_lm_folder_loads_with_its_head(folders, originals):
    import transformers as tf

    for arch in ARCHS:
        model = originals[arch]
        assert type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")), arch
        assert model.slimkit_base["head"] == CAUSAL_LM
        assert isinstance(model.lm_head, TiedLMHead) is TIED[arch]
        raw = tf.AutoModelForCausalLM.from_pretrained(folders[arch], attn_implementation="eager").eval()
        assert torch.allclose(_logits(model, _prompt()), _logits(raw, _prompt()), atol=1e-5), arch
        assert torch.equal(_generate(model, _prompt()), _generate(raw, _prompt())), arch
    assert head_of({"architectures": ["GPT2Model"]}) is None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(METHODS))
def test_round_trip_same_class_logits_generate(folders, originals, tmp_path, arch, method):
    model = _fresh(originals[arch])
    task = lm_task(folders[arch], sentences=SENTENCES, max_tokens=256, kl_tokens=64)
    model = sk.apply_(model, sk.make_config(**METHODS[method]), data=task)
    path = tmp_path / f"{arch}-{method}.slim"
    sk.save(model, path)
    loaded = sk.load(path)   # the default runtime: generate() and the KV cache must work through it
    assert type(loaded) is type(originals[arch])
    ids = _prompt()
    assert torch.equal(_logits(loaded, ids), _logits(model, ids)), "the loaded file computes what was saved"
    tokens = _generate(loaded, ids)
    assert tokens.shape == (2, 20) and torch.equal(tokens, _generate(model, ids))
    assert torch.equal(tokens, _generate(loaded, ids, use_cache=False)), "the KV cache changes nothing"
    assert path.stat().st_size < 0.8 * (folders[arch] / "model.safetensors").stat().st_size
    if TIED[arch]:
        _check_stored_once(path, loaded)
    if arch == "gpt2":
        _check_conv1d_compressed(loaded, method)


def _check_stored_once(path, loaded):
    """The table shared by the embedding and the head is in the file once, under the embedding's name."""
    arrays, manifest = read_raw(path)
    assert isinstance(loaded.lm_head, TiedLMHead)
    assert not [k for k in (*arrays, *manifest["tensors"], *manifest.get("aliases", {})) if k.startswith("lm_head")]
    source = loaded.lm_head.source
    table = [k for k in arrays if k.startswith(source + ".")]
    assert table, f"the embedding {source} is stored"
    big = [k for k, v in arrays.items() if v.nbytes >= VOCAB * 64 // 2]   # the table and the 64x256 MLP matrices
    assert sum(k.startswith(source + ".") for k in big) == 1
    assert torch.equal(loaded.lm_head.table(), _embedding_table(loaded.get_submodule(source)))


def _embedding_table(emb) -> torch.Tensor:
    decode = getattr(emb, "dequantized_weight", None)
    return decode() if callable(decode) else emb.weight


def _check_conv1d_compressed(model, method):
    for name in CONV1D:
        layer = model.get_submodule(name)
        if method == "int8":
            assert type(layer).__name__ == "Int8Linear", name
        elif method == "magnitude":
            assert type(layer) is torch.nn.Linear and float((layer.weight == 0).float().mean()) > 0.3, name
        else:
            assert type(layer) is torch.nn.Linear and layer.weight.unique().numel() <= 16, name


def test_untied_head_is_compressed_as_a_linear(originals):
    model = sk.apply_(_fresh(originals["llama"]), sk.make_config("int8"))
    assert type(model.lm_head).__name__ == "Int8Linear"


def test_tied_head_follows_the_embedding(originals):
    """Whatever a method makes of the embedding, the head multiplies by exactly what it decodes to."""
    model = sk.apply_(_fresh(originals["qwen2"]), sk.make_config("int8"))
    emb = model.model.embed_tokens
    assert type(emb).__name__ == "QuantEmbedding"
    hidden = torch.randn(3, 64)
    assert torch.equal(model.lm_head(hidden), hidden @ emb.dequantized_weight().t())
    with torch.inference_mode():
        assert model.lm_head(hidden.bfloat16()).dtype == torch.bfloat16
    twin = copy.deepcopy(model)
    assert twin.lm_head.embedding() is twin.model.embed_tokens


def test_unbound_tied_head_says_so():
    head = TiedLMHead(4, 10, "emb")
    with pytest.raises(RuntimeError, match="not bound"):
        head(torch.randn(1, 4))
    assert TiedLMHead.from_slim_spec(head.slim_spec()).source == "emb"


@pytest.mark.parametrize("method", ["int8", "kmeans"])
def test_users_own_gpt2_module(tmp_path, method):
    """A GPT2LMHeadModel built in Python (not loaded by slimkit): its Conv1D layers are compressed too, the
    tied head is stored once, and load(path, model=...) on a fresh instance replays it all."""
    import transformers as tf

    from tiny_lm import config

    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(config("gpt2")).eval()
    model = sk.apply_(model, sk.make_config(**METHODS[method]))
    _check_conv1d_compressed(model, method)
    path = tmp_path / "user-gpt2.slim"
    sk.save(model, path)
    loaded = sk.load(path, model=tf.GPT2LMHeadModel(config("gpt2")).eval(), runtime="torch")
    ids = _prompt()
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    assert torch.equal(_generate(loaded, ids), _generate(model, ids))
    _check_stored_once(path, loaded)


@pytest.mark.parametrize("recipe", ["gptq-int4", "awq-int4"])
def test_language_model_recipes_keep_the_tied_head_at_8_bits(folders, originals, tmp_path, recipe):
    """The 4-bit LM recipes quantize every Linear to 4 bits and the embedding, read by the tied head,
    to 8 bits per row, stored once; the file loads back and generates what the compressed model does."""
    from slimkit.nn.quant_embedding import QuantEmbedding
    from slimkit.nn.weight_only import QuantLinear

    model = _fresh(originals["qwen2"])   # a head tied to the embedding
    task = lm_task(folders["qwen2"], sentences=SENTENCES, max_tokens=256, kl_tokens=64)
    model = sk.run_recipe(model, sk.load_recipe(recipe), task)
    linears = [m for n, m in model.named_modules() if n.startswith("model.layers.") and isinstance(m, QuantLinear)]
    assert linears and all(m.bits == 4 for m in linears)
    assert not [n for n, m in model.named_modules() if type(m) is torch.nn.Linear], "no Linear left float"
    embedding = model.get_submodule(model.lm_head.source)
    assert isinstance(embedding, QuantEmbedding) and embedding.bits == 8
    path = tmp_path / f"{recipe}.slim"
    sk.save(model, path)
    loaded = sk.load(path)
    _check_stored_once(path, loaded)
    ids = _prompt()
    assert torch.equal(_generate(loaded, ids), _generate(model, ids))
