"""Any AutoModel architecture from a Hugging Face folder: tiny random BERT, GPT-2 and Llama, compressed,
saved, loaded back (architecture rebuilt from the config alone), outputs close, files smaller."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import slimkit as sk
from slimkit.core.provenance import task_for
from slimkit.zoo.embedding_task import hf_task
from slimkit.zoo.token_task import ByteTokenizer, token_task

SENTENCES = [f"Sentence number {i} talks about compression and tokens." for i in range(48)]
ARCHS = ("bert", "gpt2", "llama")
# (method options, max relative error of the last hidden state against the original)
RECIPES = {
    "int8": ({"method": "int8"}, 0.05),
    "rtn-int4": ({"method": "rtn", "bits": 4, "group_size": 32}, 0.3),
    "kmeans": ({"method": "kmeans", "bits": 4, "finetune_epochs": 0}, 0.3),
}


def _configs():
    import transformers as tf

    return {
        "bert": tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=64),
        "gpt2": tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                              bos_token_id=0, eos_token_id=0),
        "llama": tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                bos_token_id=0, eos_token_id=0),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Randomly initialised tiny models saved with save_pretrained (safetensors, no tokenizer)."""
    import transformers as tf

    out = {}
    for arch, config in _configs().items():
        folder = tmp_path_factory.mktemp(f"hf-{arch}")
        torch.manual_seed(0)
        tf.AutoModel.from_config(config).save_pretrained(folder, safe_serialization=True)
        out[arch] = folder
    return out


def _hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize(("arch", "recipe"), [("bert", "int8"), ("gpt2", "int8"), ("llama", "int8"),
                                            ("llama", "rtn-int4"), ("gpt2", "kmeans")])
def test_compress_save_load(folders, tmp_path, arch, recipe):
    options, tolerance = RECIPES[recipe]
    folder = folders[arch]
    model = sk.resolve(str(folder))
    assert model.slimkit_base["kind"] == "hf" and model.slimkit_base["config"]["model_type"] == arch
    task = token_task(folder, sentences=SENTENCES)
    batch = task.example_inputs(4)
    original = _hidden(model, batch)
    model = sk.apply_(model, sk.make_config(**options), data=task)
    path = tmp_path / f"{arch}-{recipe}.slim"
    size = sk.save(model, path)
    loaded = sk.load(path, runtime="torch")
    assert type(loaded).__name__ == type(model).__name__
    out = _hidden(loaded, batch)
    assert torch.equal(out, _hidden(model, batch)), "the loaded artifact computes what was saved"
    rel = float((out - original).norm() / original.norm())
    assert rel < tolerance, f"{arch} {recipe}: relative error {rel:.4f}"
    assert size < 0.6 * (folder / "model.safetensors").stat().st_size


def test_gpt2_conv1d_becomes_linear(folders):
    """GPT-2's transposed Conv1D layers are plain Linears (so Linear methods apply), same outputs."""
    import transformers as tf

    model = sk.resolve(str(folders["gpt2"]))
    attn = model.h[0].attn.c_attn
    assert type(attn) is torch.nn.Linear and tuple(attn.weight.shape) == (3 * 64, 64)
    raw = tf.AutoModel.from_pretrained(folders["gpt2"], attn_implementation="eager").eval()
    batch = token_task(folders["gpt2"], sentences=SENTENCES).example_inputs(3)
    assert torch.allclose(_hidden(model, batch), _hidden(raw, batch), atol=1e-5)
    int8 = sk.apply_(model, sk.make_config("int8"))
    assert type(int8.h[0].mlp.c_fc).__name__ != "Linear", "GPT-2 MLP layers are quantized"


def test_token_task_without_tokenizer(folders):
    folder = folders["llama"]
    task = task_for(sk.resolve(str(folder)))
    assert isinstance(task.tokenizer_, ByteTokenizer)
    assert task.tokenizer_.vocab_size == 128 and task.tokenizer_.model_max_length == 64
    batches = task.calibration(40)
    assert [b["input_ids"].shape[0] for b in batches] == [32, 8]
    assert all(int(b["input_ids"].max()) < 128 and b["input_ids"].shape[1] <= 64 for b in batches)
    small = token_task(folder, sentences=SENTENCES)
    model = small.reference()
    assert abs(small.score(model) - 1.0) < 1e-6
    with torch.no_grad():
        model.embed_tokens.weight.mul_(-1.0)
    assert small.score(model) < 0.9


def test_byte_tokenizer_pads_and_truncates():
    tok = ByteTokenizer(vocab_size=100, model_max_length=4, pad_id=7)
    out = tok(["abcdef", "a", ""], padding="longest", max_length=128)
    assert out["input_ids"].tolist() == [[97, 98, 99, 0], [97, 7, 7, 7], [7, 7, 7, 7]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert tok(["ab"], padding="max_length", max_length=3)["input_ids"].shape == (1, 3)
    with pytest.raises(sk.SlimError, match="vocab_size"):
        ByteTokenizer.from_config({"model_type": "x"})


def test_decoder_tokenizer_without_pad_token(folders, tmp_path):
    """A GPT-2 style tokenizer has no pad token: padding falls back to its eos token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "gpt2-tok"
    shutil.copytree(folders["gpt2"], folder)
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(vocab_size=100, special_tokens=["<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>",
                            model_max_length=64).save_pretrained(folder)
    model = sk.resolve(str(folder))
    task = task_for(model)
    assert not isinstance(task.tokenizer_, ByteTokenizer)
    small = hf_task(folder, sentences=SENTENCES)
    batch = small.example_inputs(2)
    assert batch["input_ids"].shape == (2, 40) and int(batch["attention_mask"].sum()) < 80
    assert abs(small.score(model) - 1.0) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_cli_compress_hf_folder(folders, tmp_path, arch):
    import subprocess
    import sys

    out = tmp_path / f"{arch}.slim"
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "compress", str(folders[arch]),
                           "--recipe", "int8", "--out", str(out), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ratio"] > 3 and result["score"] > 0.99
    assert sk.load(out).slimkit_base["config"]["model_type"] == arch


def test_manifest_config_cannot_force_a_huge_allocation(folders, tmp_path):
    """A .slim whose HF config was edited to describe a 10 GB model is refused before anything is built."""
    from slimkit.io.artifact import read_raw, write_raw

    model = sk.apply_(sk.resolve(str(folders["bert"])), sk.make_config("int8"))
    sk.save(model, tmp_path / "ok.slim")
    arrays, manifest = read_raw(tmp_path / "ok.slim")
    manifest["base"]["config"]["vocab_size"] = 40_000_000
    write_raw(tmp_path / "bomb.slim", arrays, manifest)
    with pytest.raises(sk.SlimFormatError, match=r"embedding table alone takes \d+ bytes|bytes of weights"):
        sk.load(tmp_path / "bomb.slim")
    manifest["base"]["config"]["num_attention_heads"] = 0
    manifest["base"]["config"]["vocab_size"] = 128
    write_raw(tmp_path / "bad.slim", arrays, manifest)
    with pytest.raises(sk.SlimFormatError):
        sk.load(tmp_path / "bad.slim")
