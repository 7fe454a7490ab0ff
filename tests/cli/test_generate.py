"""`slimkit generate`: text on stdout, tokens/s on stderr, one-line errors (exit 2) for bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from tests.cli_runner import cli

import slimkit as sk
from slimkit.core.torch_utils import num_threads
from slimkit.nn.kernels import runtime_report
from slimkit.zoo.generate import generate, load_causal_lm

SENTENCES = [f"the {a} {b} runs over the {c} hill and sees {n} birds" for a in ("small", "big", "red", "old")
             for b in ("dog", "cat", "fox") for c in ("green", "far", "steep") for n in ("two", "many")]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A random 2-layer Llama (layers big enough for the low-bit kernels) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(vocab_size=256, special_tokens=["<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>",
                            model_max_length=128).save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, eos_token_id=None, bos_token_id=None, pad_token_id=1)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None   # random weights: always generate the tokens asked for
    model.save_pretrained(folder)
    return folder


def _json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_greedy_text_is_transformers_own(llama_folder, monkeypatch, capsys):
    from transformers import AutoTokenizer, LlamaForCausalLM

    code, out, err = cli(monkeypatch, capsys, "generate", str(llama_folder), "the red fox", "-n", "6",
                         "--threads", "1", "--json")
    assert code == 0, err
    result = _json(out)
    tok = AutoTokenizer.from_pretrained(llama_folder)
    ids = tok("the red fox", return_tensors="pt")["input_ids"]
    with torch.no_grad(), num_threads(1):
        ref = LlamaForCausalLM.from_pretrained(llama_folder).eval().generate(ids, max_new_tokens=6, do_sample=False)
    assert result["text"] == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert result["prompt_tokens"] == ids.shape[1] and result["new_tokens"] == 6 and result["threads"] == 1
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0


def test_plain_output_and_speed_on_stderr(llama_folder, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "generate", str(llama_folder), "the old cat", "-n", "4",
                         "--threads", "1")
    assert code == 0, err
    _, as_json, _ = cli(monkeypatch, capsys, "generate", str(llama_folder), "the old cat", "-n", "4",
                        "--threads", "1", "--json")
    assert out == _json(as_json)["text"] + "\n", "stdout holds the text alone"
    assert "prefill" in err and "decode 4 tokens" in err and "tokens/s" in err


def test_compressed_artifact_generates_on_its_low_bit_kernels(llama_folder, tmp_path, monkeypatch, capsys):
    model = sk.resolve(str(llama_folder))
    sk.quantize_(model, sk.Int8Config())
    path = tmp_path / "int8.slim"
    sk.save(model, path)
    code, _, err = cli(monkeypatch, capsys, "generate", str(path), "the big dog")
    assert code == 2 and "no tokenizer found" in err, "a .slim of a user's folder does not record the folder"
    code, out, err = cli(monkeypatch, capsys, "generate", str(path), "the big dog", "-n", "5", "--threads", "1",
                         "--tokenizer", str(llama_folder), "--json")
    assert code == 0, err
    assert _json(out)["new_tokens"] == 5
    loaded, tok = load_causal_lm(str(path), tokenizer=llama_folder)
    with num_threads(1):
        first = generate(loaded, tok, "the big dog", max_new_tokens=5)
        again = generate(loaded, tok, "the big dog", max_new_tokens=5, warmup=False)
    assert first.text == again.text and first.new_tokens == 5
    report = runtime_report(loaded)
    chosen = report["layers"]["model.layers.0.mlp.up_proj"]["choices"].get("rows<=1")
    assert chosen in {"dense", "nbits", "pack", "int", "fbgemm"}   # int / fbgemm: CPUs with VNNI


def test_sampling_with_a_seed_repeats(llama_folder):
    model, tok = load_causal_lm(str(llama_folder))
    with num_threads(1):
        a = generate(model, tok, "the small fox", max_new_tokens=8, temperature=1.5, seed=3, warmup=False)
        b = generate(model, tok, "the small fox", max_new_tokens=8, temperature=1.5, seed=3, warmup=False)
    assert a.text == b.text and a.new_tokens == 8


@pytest.mark.parametrize("args,message", [
    (["", "-n", "3"], "the prompt is empty"),
    (["hello", "-n", "0"], "max_new_tokens must be an integer in 1.."),
    (["hello", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["hello", "--threads", "-2"], "threads must be a positive integer"),
    (["the dog", "-n", "500"], "exceed the model's 128 positions"),
])
def test_bad_options_are_one_line_errors(llama_folder, monkeypatch, capsys, args, message):
    code, out, err = cli(monkeypatch, capsys, "generate", str(llama_folder), *args)
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]   # after a "loading" progress line, when the model was read
    assert last.startswith("slimkit: error: ") and message in last and err.count("slimkit: error") == 1


def test_compiled_decoding_without_a_compiler_is_a_one_line_error(llama_folder, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, out, err = cli(monkeypatch, capsys, "generate", str(llama_folder), "the dog", "--compile")
    assert code == 2 and out == "" and "needs a C++ compiler" in err.strip().splitlines()[-1]


def test_models_that_cannot_generate_are_refused(llama_folder, tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "generate", "builtin:lenet-300-100", "hello")
    assert code == 2 and "not a causal language model" in err.strip().splitlines()[-1]
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (bare / name).write_bytes((llama_folder / name).read_bytes())
    code, _, err = cli(monkeypatch, capsys, "generate", str(bare), "hello")
    assert code == 2 and "no tokenizer found" in err.strip().splitlines()[-1]
    code, out, err = cli(monkeypatch, capsys, "generate", str(bare), "the red fox", "-n", "2",
                         "--tokenizer", str(llama_folder), "--json")
    assert code == 0 and _json(out)["new_tokens"] == 2
    code, _, err = cli(monkeypatch, capsys, "generate", str(tmp_path / "missing"), "hello")
    assert code == 2 and "no such model" in err


def test_compiled_decoding_compiles_before_the_timed_run(llama_folder):
    """The compile warm-up sizes the static KV cache for the whole generation: the timed run reuses
    the compiled step (a cache of another length is another shape, compiled again inside the timing)."""
    from torch._dynamo.utils import counters

    from slimkit.zoo.generate import check_compiler

    try:
        check_compiler()
    except ValueError:
        pytest.skip("no C++ compiler for torch.compile here")
    model, tok = load_causal_lm(str(llama_folder))
    real, graphs = model.generate, []

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        graphs.append(counters["stats"]["unique_graphs"])
        return out

    model.generate = spy
    torch._dynamo.reset()
    counters.clear()
    with num_threads(1):
        out = generate(model, tok, "the red fox", max_new_tokens=12, compile=True)
    assert out.new_tokens == 12
    warmup_eager, warmup_compiled, timed = graphs
    assert warmup_eager == 0 and warmup_compiled > 0, "the second warm-up compiles the one-token step"
    assert timed == warmup_compiled, "the timed run compiled again"
