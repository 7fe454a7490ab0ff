"""GGUF export of a plain Hugging Face Llama folder carries its tokenizer: a tiny byte-level BPE trained here
with `tokenizers`, compressed, exported, read back with gguf's reader and compared with tokenizer.json; and,
where llama-cpp-python is installed, llama.cpp's tokenization of held-out text equals the HF tokenizer's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import slimkit as sk
from cli_runner import cli
from slimkit.core.errors import SlimError
from slimkit.export.gguf import export_gguf
from slimkit.export.gguf_vocab import LLAMA3_SPLIT, QWEN2_SPLIT, identify_pre

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TRAIN = [
    "The quick brown fox jumps over the lazy dog.",
    "A model that is compressed keeps its tokenizer, so llama.cpp can read text.",
    "Numbers like 12345 and 2024 appear in text; so do 3.14 and 1,000,000.",
    "She said: 'we'll see', and they've gone home. It's late!",
    "Compression makes trained networks smaller and faster, and proves it.",
] * 4
HELD_OUT = [
    "The lazy fox is compressed.",
    "Prices rose 17% in 2023 -- from $9.99 to $11.69!",
    "  two spaces, then\na new line\n\nand tabs\there.",
    "We'll keep the tokenizer; they'd said it's fine.",
    "Ünïcödé and emoji 🦙 survive as bytes.",
]
EXTRA_ROWS = 5   # embedding rows the tokenizer does not use: padded as [PADn]


def train_tokenizer(pre: str):
    """A ~300-token byte-level BPE with <|endoftext|> / <s> / </s>, BOS added by its post-processor."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    steps = {
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                          pre_tokenizers.ByteLevel(add_prefix_space=False)]),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), byte_level]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"), byte_level]),
        "unknown": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s+"), "isolated"), byte_level]),
    }
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = steps[pre]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TRAIN, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def tiny_llama_with_tokenizer(folder, pre: str = "gpt-2"):
    """A 2-layer random LlamaForCausalLM saved with a trained BPE tokenizer and a chat template."""
    tok = train_tokenizer(pre)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size() + EXTRA_ROWS, hidden_size=64,
                                      intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                                      bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"))
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return tiny_llama_with_tokenizer(tmp_path_factory.mktemp("tok-llama") / "hf")


def int8_slim(folder, path):
    model = sk.resolve(str(folder))
    sk.quantize_(model, sk.Int8Config())
    sk.save(model, path)
    return sk.load(path)


def test_bpe_vocabulary_matches_tokenizer_json(tmp_path, llama_folder):
    model = int8_slim(llama_folder, tmp_path / "m.slim")
    report = export_gguf(model, tmp_path / "m.gguf", tokenizer=llama_folder)
    tok = json.loads((llama_folder / "tokenizer.json").read_text())
    size = model.config.vocab_size
    vocab = report["vocab"]
    assert vocab == {"source": str(llama_folder), "model": "gpt2", "pre": "gpt-2", "tokens": size,
                     "merges": len(tok["model"]["merges"]), "note": None}
    assert report["tokenizer"] == str(llama_folder)
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    names = {i: t for t, i in tok["model"]["vocab"].items()}
    specials = {a["id"]: a["content"] for a in tok["added_tokens"]}
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == len(types) == size
    for i in range(size):
        if i in specials:
            assert (tokens[i], types[i]) == (specials[i], gguf.TokenType.CONTROL)
        elif i in names:
            assert (tokens[i], types[i]) == (names[i], gguf.TokenType.NORMAL)
        else:
            assert (tokens[i], types[i]) == (f"[PAD{i}]", gguf.TokenType.UNUSED)
    assert fields["tokenizer.ggml.merges"].contents() == [" ".join(m) for m in tok["model"]["merges"]]
    ids = {"bos": "<s>", "eos": "</s>", "unknown": "<|endoftext|>", "padding": "<|endoftext|>"}
    for key, text in ids.items():
        assert fields[f"tokenizer.ggml.{key}_token_id"].contents() == tok["model"]["vocab"][text], key
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True    # the post-processor puts <s> first
    assert fields["tokenizer.ggml.add_eos_token"].contents() is False
    assert "<s>{{ m['content'] }}</s>" in fields["tokenizer.chat_template"].contents()


@pytest.mark.parametrize("pre", ["smollm", "llama-bpe", "qwen2", "unknown"])
def test_pre_tokenizer_is_named_from_its_structure(tmp_path, pre):
    train_tokenizer(pre).save(str(tmp_path / "tokenizer.json"))
    tok = json.loads((tmp_path / "tokenizer.json").read_text())
    assert identify_pre(tok) == (None if pre == "unknown" else pre)


def test_unknown_pre_tokenizer_is_written_as_default_and_said(tmp_path):
    folder = tiny_llama_with_tokenizer(tmp_path / "hf", pre="unknown")
    report = export_gguf(sk.resolve(str(folder)), tmp_path / "m.gguf")
    assert report["vocab"]["pre"] == "default" and report["vocab"]["model"] == "gpt2"
    assert "pre-tokenizer Split+ByteLevel is not one slimkit can name" in report["vocab"]["note"]
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.pre"].contents() == "default"


def test_a_slim_file_never_names_the_tokenizer_folder(tmp_path, llama_folder):
    """docs/safety.md: the folder a .slim was made from is not read unless the user names it."""
    report = export_gguf(int8_slim(llama_folder, tmp_path / "m.slim"), tmp_path / "m.gguf")
    assert report["tokenizer"] == "none" and report["vocab"]["model"] == "none"
    assert "name the model's Hugging Face folder with --tokenizer" in report["vocab"]["note"]
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.model"].contents() == "none"
    with pytest.raises(SlimError, match="tokenizer folder .* does not exist"):
        export_gguf(sk.load(tmp_path / "m.slim"), tmp_path / "m.gguf", tokenizer=tmp_path / "nowhere")


def test_no_vocabulary_when_the_folder_is_gone_or_unusable(tmp_path, llama_folder):
    folder = tmp_path / "hf"
    shutil.copytree(llama_folder, folder)
    model = sk.resolve(str(folder))   # loaded from the folder: its base names it
    shutil.rmtree(folder)
    report = export_gguf(model, tmp_path / "m.gguf")
    assert report["tokenizer"] == "none" and report["vocab"]["model"] == "none"
    assert report["vocab"]["note"] == f"no tokenizer: the model's folder {folder} is gone"
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.model"].contents() == "none"

    shutil.copytree(llama_folder, folder)   # a broken SentencePiece model (or no package to read it): one line
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x00")
    report = export_gguf(model, tmp_path / "m.gguf")
    assert report["vocab"]["model"] == "none"
    assert report["vocab"]["note"] in (
        f"no tokenizer: {folder / 'tokenizer.model'} cannot be read as SentencePiece (DecodeError)",
        f"no tokenizer: {folder / 'tokenizer.model'} is SentencePiece, which needs the package 'sentencepiece' "
        "(pip install sentencepiece)")

    (folder / "tokenizer.model").unlink()
    tok = json.loads((llama_folder / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzz"] = model.config.vocab_size + 3   # an id past the embedding rows
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    report = export_gguf(model, tmp_path / "m.gguf")
    assert report["vocab"]["model"] == "none" and "embedding rows" in report["vocab"]["note"]


def test_user_module_has_no_folder(tmp_path, llama_folder):
    model = transformers.LlamaForCausalLM.from_pretrained(llama_folder)   # not loaded by slimkit: no base
    report = export_gguf(model, tmp_path / "m.gguf")
    assert report["vocab"]["note"] == "no tokenizer: the model did not come from a Hugging Face folder"


def test_cli_says_where_the_tokenizer_came_from(tmp_path, llama_folder, monkeypatch, capsys):
    int8_slim(llama_folder, tmp_path / "m.slim")
    args = ("export", str(tmp_path / "m.slim"), "--gguf", str(tmp_path / "m.gguf"))
    code, out, err = cli(monkeypatch, capsys, *args, "--tokenizer", str(llama_folder))
    assert code == 0, err
    said = f"BPE tokenizer from {llama_folder}: {300 + EXTRA_ROWS} tokens, pre-tokenizer 'gpt-2'"
    assert said in " ".join(out.split())
    code, out, err = cli(monkeypatch, capsys, *args, "--force")
    assert code == 0, err
    assert "no tokenizer (token ids only)" in out and "tokenizer: no tokenizer: a .slim file" in " ".join(out.split())
    code, out, err = cli(monkeypatch, capsys, *args, "--force", "--tokenizer", str(tmp_path / "nowhere"))
    assert code == 2 and "--tokenizer" in err and "no such folder" in err


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_llama_cpp_tokenizes_like_hugging_face(tmp_path, pre):
    llama_cpp = pytest.importorskip("llama_cpp")
    folder = tiny_llama_with_tokenizer(tmp_path / "hf", pre)
    export_gguf(int8_slim(folder, tmp_path / "m.slim"), tmp_path / "m.gguf", tokenizer=folder)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, vocab_only=True, verbose=False)
    try:
        for text in HELD_OUT + TRAIN[:3]:
            want = hf(text)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == want, text
            assert llm.detokenize(want[1:]).decode() == text
    finally:
        llm.close()


def spm_folder(folder, **options):
    """A tiny random Llama beside a SentencePiece tokenizer.model (BPE with byte fallback, no normalization
    and spaces kept, as Llama 2's; `options` override the trainer's)."""
    import io

    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAIN), model_writer=model, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2, **{
                                       "normalization_rule_name": "identity", "remove_extra_whitespaces": False,
                                       **options})
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=sp.vocab_size() + EXTRA_ROWS, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id())
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder, sp


def test_sentencepiece_vocabulary_matches_tokenizer_model(tmp_path):
    folder, sp = spm_folder(tmp_path / "hf")
    report = export_gguf(sk.resolve(str(folder)), tmp_path / "m.gguf")
    size = sp.vocab_size() + EXTRA_ROWS
    assert report["vocab"] == {"source": str(folder), "model": "llama", "pre": "default", "tokens": size,
                               "merges": 0, "note": None}
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    tokens, scores = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    pads = [f"[PAD{i}]" for i in range(sp.vocab_size(), size)]
    assert tokens == [sp.id_to_piece(i) for i in range(sp.vocab_size())] + pads
    assert scores[:sp.vocab_size()] == pytest.approx([sp.get_score(i) for i in range(sp.vocab_size())])
    assert types[sp.unk_id()] == gguf.TokenType.UNKNOWN and types[sp.bos_id()] == gguf.TokenType.CONTROL
    assert types[sp.piece_to_id("<0x41>")] == gguf.TokenType.BYTE and types[-1] == gguf.TokenType.UNUSED
    assert fields["tokenizer.ggml.bos_token_id"].contents() == sp.bos_id()
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is True


def test_sentencepiece_normalization_llama_cpp_skips_is_said(tmp_path):
    folder, _ = spm_folder(tmp_path / "hf", normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True)
    note = export_gguf(sk.resolve(str(folder)), tmp_path / "m.gguf")["vocab"]["note"]
    assert note == ("tokenizer.model's normalization 'nmt_nfkc' and whitespace collapsing are not applied by "
                    "llama.cpp (text it changes is tokenized differently)")


def test_llama_cpp_tokenizes_like_sentencepiece(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    folder, sp = spm_folder(tmp_path / "hf")
    export_gguf(sk.resolve(str(folder)), tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, vocab_only=True, verbose=False)
    try:
        for text in HELD_OUT + TRAIN[:3]:
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == [sp.bos_id(), *sp.encode(text)], text
    finally:
        llm.close()
