"""The vocabulary of a GGUF export, read from the Hugging Face folder the model was compressed from.

llama.cpp tokenizes text itself, so a GGUF file must carry the model's tokenizer. This module writes it
the way llama.cpp's `convert_hf_to_gguf.py` does, from the files of a Hugging Face folder: the one a
model loaded from a folder records in its base (`slimkit.core.provenance.base_of(model)["path"]`), or
the one the caller names (a model loaded from a .slim file records none: docs/safety.md):

- `tokenizer.model` (SentencePiece, Llama-2 style): `tokenizer.ggml.model = "llama"` with each token's
  text, score and type (normal / control / unknown / unused / byte), the dummy-prefix setting, and the
  added tokens. Needs the `sentencepiece` package; without it the vocabulary is refused with a note.
- `tokenizer.json` with a byte-level BPE model (GPT-2, Llama 3, SmolLM, Qwen2 style): `"gpt2"` with the
  tokens (added tokens raw, special ones typed control, ids the tokenizer lacks padded as `[PADn]`),
  the merges and `tokenizer.ggml.pre`, the name of llama.cpp's pre-tokenizer. That name is identified
  from the tokenizer's `pre_tokenizer` structure (`identify_pre`: the regex split, digit splitting and
  byte-level steps llama.cpp implements under that name); an unknown structure is written as
  "default" and the report's note says so, since llama.cpp may then split words differently.

Both also get the special token ids, add-bos / add-eos and the chat template (gguf's `SpecialVocab`,
as in `convert_hf_to_gguf.py`); where the folder's files do not say whether BOS / EOS are added, the
tokenizer itself is asked (it encodes a letter with and without special tokens).

Anything else (no folder, the folder gone, a WordPiece or Unigram tokenizer, a byte-fallback BPE
without `tokenizer.model`, more tokens than the model's embedding rows) writes `tokenizer.ggml.model =
"none"` (llama.cpp then runs the file on token ids only) and the note says why, in one line.

>>> info = add_vocab(writer, "/models/tiny-llama", vocab_size=32000)    # doctest: +SKIP
>>> info["model"], info["pre"], info["note"]                             # doctest: +SKIP
('gpt2', 'llama-bpe', None)
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# the pre-tokenizer steps of a tokenizer.json (`pre_steps`) -> the llama.cpp pre-tokenizer that does the same
KNOWN_PRE = {
    ("words",): "gpt-2",
    (f"split {GPT2_SPLIT}",): "gpt-2",
    ("digits", "words"): "smollm",
    (f"split {LLAMA3_SPLIT}", "ignore merges"): "llama-bpe",
    (f"split {QWEN2_SPLIT}",): "qwen2",
}
NONE = {"model": "none", "pre": None, "tokens": 0, "merges": 0}


def add_vocab(writer, folder: str | Path | None, vocab_size: int) -> dict[str, Any]:
    """Write the tokenizer of the Hugging Face `folder` into the GGUF `writer` (or "none" where it cannot).

    Returns {"source": folder or "none", "model": "gpt2" / "llama" / "none", "pre": llama.cpp's
    pre-tokenizer name or None, "tokens", "merges", "note": one line, or None when nothing is to be said}.
    """
    where = Path(folder) if folder else None
    try:
        info = _write(writer, where, vocab_size)
    except VocabRefused as exc:
        writer.add_tokenizer_model("none")
        return {**NONE, "source": "none", "note": str(exc)}
    return {"source": str(where), **info}


class VocabRefused(Exception):
    """The folder's tokenizer cannot be written (the message is the report's note)."""


def _write(writer, folder: Path | None, vocab_size: int) -> dict[str, Any]:
    if folder is None:
        raise VocabRefused("no tokenizer: the model did not come from a Hugging Face folder")
    if not folder.is_dir():
        raise VocabRefused(f"no tokenizer: the model's folder {folder} is gone")
    spm = folder / "tokenizer.model"
    tok = read_json(folder / "tokenizer.json")
    if spm.is_file() and (tok is None or not byte_level(tok)):
        if importlib.util.find_spec("sentencepiece") is None:
            raise VocabRefused(f"no tokenizer: {spm} is SentencePiece, which needs the package 'sentencepiece' "
                               "(pip install sentencepiece)")
        return spm_vocab(writer, folder, vocab_size)
    if tok is None:
        raise VocabRefused(f"no tokenizer: {folder} has no tokenizer.json or tokenizer.model")
    kind = (tok.get("model") or {}).get("type")
    if kind != "BPE" or not byte_level(tok):
        what = "a byte-fallback BPE without tokenizer.model" if kind == "BPE" else f"a {kind} model"
        raise VocabRefused(f"no tokenizer: {folder / 'tokenizer.json'} is {what}; GGUF export writes "
                           "byte-level BPE and SentencePiece vocabularies")
    return bpe_vocab(writer, folder, tok, vocab_size)


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabRefused(f"no tokenizer: {path} cannot be read ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise VocabRefused(f"no tokenizer: {path} is not a JSON object")
    return data


def pre_steps(tok: dict) -> tuple[str, ...] | None:
    """The pre-tokenizer of a tokenizer.json as steps: "words" (byte-level's GPT-2 split), "split REGEX"
    (an isolating regex split), "digits" (each digit alone), "ignore merges"; None for anything else."""
    steps: list[str] = []

    def walk(pre: dict | None) -> bool:
        kind = (pre or {}).get("type")
        if kind == "Sequence":
            return all(walk(p) for p in pre.get("pretokenizers") or [])
        if kind == "ByteLevel":
            if pre.get("add_prefix_space"):
                return False
            steps.extend(["words"] if pre.get("use_regex", True) else [])
            return True
        if kind == "Split":
            pattern = pre.get("pattern") or {}
            if pre.get("invert") or pre.get("behavior") != "Isolated" or "Regex" not in pattern:
                return False
            steps.append(f"split {pattern['Regex']}")
            return True
        if kind == "Digits":
            steps.append("digits" if pre.get("individual_digits") else "numbers")
            return True
        return False

    if not walk(tok.get("pre_tokenizer")):
        return None
    if (tok.get("model") or {}).get("ignore_merges"):
        steps.append("ignore merges")
    return tuple(steps)


def identify_pre(tok: dict) -> str | None:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json, or None when it is not one it knows."""
    steps = pre_steps(tok)
    return None if steps is None else KNOWN_PRE.get(steps)


def byte_level(tok: dict) -> bool:
    """Whether a tokenizer.json maps bytes to characters GPT-2 style (a ByteLevel pre-tokenizer step)."""
    def has(pre: dict | None) -> bool:
        pre = pre or {}
        return pre.get("type") == "ByteLevel" or any(has(p) for p in pre.get("pretokenizers") or [])
    return has(tok.get("pre_tokenizer")) and not (tok.get("model") or {}).get("byte_fallback")


def looks_special(text: str) -> bool:
    """Added tokens llama.cpp's converter marks control even when the tokenizer does not say special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def bpe_tokens(tok: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts and GGUF token types of a byte-level BPE tokenizer.json, padded to `vocab_size`."""
    import gguf

    names: dict[int, str] = {int(i): t for t, i in (tok["model"].get("vocab") or {}).items()}
    added = {int(a["id"]): a for a in tok.get("added_tokens") or []}
    names.update({i: a["content"] for i, a in added.items()})
    if names and max(names) >= vocab_size:
        raise VocabRefused(f"no tokenizer: it has token id {max(names)}, the model only {vocab_size} embedding rows")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in names:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            text = names[i]
            special = added[i].get("special") or looks_special(text)
            tokens.append(text if special else text.replace("\u2581", " "))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(names[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def bpe_vocab(writer, folder: Path, tok: dict, vocab_size: int) -> dict[str, Any]:
    tokens, types = bpe_tokens(tok, vocab_size)
    pre = identify_pre(tok)
    notes = []
    if pre is None:
        notes.append(f"pre-tokenizer {describe(tok.get('pre_tokenizer'))} is not one slimkit can name for "
                     "llama.cpp: written as 'default' (llama.cpp may split some text differently)")
    if tok.get("normalizer"):
        kind = (tok["normalizer"] or {}).get("type")
        notes.append(f"the tokenizer's normalizer ({kind}) is not applied by llama.cpp")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = add_specials(writer, folder, vocab_size, merges=True)
    return {"model": "gpt2", "pre": pre or "default", "tokens": len(tokens), "merges": merges,
            "note": "; ".join(notes) or None}


def describe(pre: dict | None) -> str:
    """A short name for a tokenizer.json pre_tokenizer: its type, or its steps' types joined by '+'."""
    pre = pre or {}
    parts = pre.get("pretokenizers")
    return "+".join(describe(p) for p in parts) if parts else str(pre.get("type") or "none")


def spm_vocab(writer, folder: Path, vocab_size: int) -> dict[str, Any]:
    """A SentencePiece tokenizer.model as llama.cpp's "llama" vocabulary (scores and types per token)."""
    import gguf
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as pb

    try:
        blob = (folder / "tokenizer.model").read_bytes()
        proto = pb.ModelProto()
        proto.ParseFromString(blob)
        sp = SentencePieceProcessor(model_proto=blob)
    except Exception as exc:   # protobuf's DecodeError, sentencepiece's RuntimeError, an OSError
        raise VocabRefused(f"no tokenizer: {folder / 'tokenizer.model'} cannot be read as SentencePiece "
                           f"({type(exc).__name__})") from None
    if sp.vocab_size() > vocab_size:
        raise VocabRefused(f"no tokenizer: tokenizer.model has {sp.vocab_size()} tokens, the model only "
                           f"{vocab_size} embedding rows")
    tokens, scores, types = [f"[PAD{i}]".encode() for i in range(vocab_size)], [-1000.0] * vocab_size, \
        [int(gguf.TokenType.UNUSED)] * vocab_size
    for i in range(sp.vocab_size()):
        kind = (gguf.TokenType.UNKNOWN if sp.IsUnknown(i) else gguf.TokenType.CONTROL if sp.IsControl(i)
                else gguf.TokenType.UNUSED if sp.IsUnused(i) else gguf.TokenType.BYTE if sp.IsByte(i)
                else gguf.TokenType.NORMAL)
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), float(sp.GetScore(i)), int(kind)
    for i, text, special in added_tokens(folder):
        if i >= vocab_size:
            continue
        special = special or looks_special(text)
        tokens[i] = (text if special else text.replace("\u2581", " ")).encode("utf-8")
        types[i] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        scores[i] = -1000.0
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(bool(proto.normalizer_spec.add_dummy_prefix))
    writer.add_remove_extra_whitespaces(bool(proto.normalizer_spec.remove_extra_whitespaces))
    add_specials(writer, folder, vocab_size, merges=False)
    norm = proto.normalizer_spec
    note = None
    if norm.name not in ("", "identity") or norm.remove_extra_whitespaces:
        what = [f"normalization {norm.name!r}"] * (norm.name not in ("", "identity")) \
            + ["whitespace collapsing"] * bool(norm.remove_extra_whitespaces)
        note = (f"tokenizer.model's {' and '.join(what)} {'are' if len(what) > 1 else 'is'} not applied by "
                "llama.cpp (text it changes is tokenized differently)")
    return {"model": "llama", "pre": "default", "tokens": vocab_size, "merges": 0, "note": note}


def added_tokens(folder: Path) -> list[tuple[int, str, bool]]:
    """(id, text, special) of the tokens added to a SentencePiece model (tokenizer.json or added_tokens.json)."""
    tok = read_json(folder / "tokenizer.json")
    if tok is not None:
        return [(int(a["id"]), a["content"], bool(a.get("special"))) for a in tok.get("added_tokens") or []]
    extra = read_json(folder / "added_tokens.json") or {}
    return [(int(i), t, False) for t, i in extra.items()]


def add_specials(writer, folder: Path, vocab_size: int, merges: bool) -> int:
    """Special token ids, add-bos / add-eos, chat template (and merges) by gguf's `SpecialVocab`; returns
    the number of merges written."""
    import gguf

    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)   # its notes on unusual templates are for convert_hf_to_gguf's console
    try:
        special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=vocab_size)
    finally:
        log.setLevel(level)
    if merges and not special.merges:
        raise VocabRefused(f"no tokenizer: {folder / 'tokenizer.json'} has no merges")
    for kind, added in added_by_tokenizer(folder, special.special_token_ids).items():
        special.add_special_token.setdefault(kind, added)
    special.add_to_gguf(writer, quiet=True)
    return len(special.merges)


def added_by_tokenizer(folder: Path, ids: dict[str, int]) -> dict[str, bool]:
    """{"bos": bool, "eos": bool}: whether the folder's tokenizer.json puts the BOS / EOS token around a
    text (asked of the `tokenizers` library); empty when it cannot be asked."""
    if importlib.util.find_spec("tokenizers") is None or not (folder / "tokenizer.json").is_file():
        return {}
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        plain = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a", add_special_tokens=True).ids
    except Exception:   # a tokenizer the library cannot run: SpecialVocab's reading of the files stands
        return {}
    at = next((k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), None)
    if at is None:
        return {}
    start, end = full[:at], full[at + len(plain):]
    out = {}
    if "bos" in ids:
        out["bos"] = ids["bos"] in start
    if "eos" in ids:
        out["eos"] = ids["eos"] in end
    return out
