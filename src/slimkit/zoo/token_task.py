"""Fidelity for Hugging Face folders that ship no tokenizer: the text's UTF-8 bytes become token ids.

A randomly initialised or weights-only folder (config.json + *.safetensors) has no vocabulary, yet
compression still needs calibration inputs and a fidelity score. `ByteTokenizer` turns the embedded
English sentences into ids deterministically (byte value modulo the model's vocabulary), padded with
the config's pad id and truncated to its position limit, so `EmbeddingTask` (mean cosine of the
mean-pooled last hidden states against the original model) works unchanged for any `AutoModel`
architecture: encoders (BERT) and decoders (GPT-2, Llama) alike.

>>> from slimkit.zoo.token_task import token_task
>>> task = token_task("path/to/gpt2-folder")                           # doctest: +SKIP
>>> task.score(task.reference())                                       # doctest: +SKIP
1.0
"""

from __future__ import annotations

from pathlib import Path

import torch

from slimkit.core.errors import SlimError
from slimkit.zoo.corpus import sentences as embedded
from slimkit.zoo.corpus import split
from slimkit.zoo.embedding_task import MAX_LENGTH, EmbeddingTask
from slimkit.zoo.hf import check_folder, load_hf_folder, read_config

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


class ByteTokenizer:
    """Sentences -> `input_ids` / `attention_mask`, one id per UTF-8 byte (`byte % vocab_size`).

    Mirrors the part of a `transformers` tokenizer's call that `EmbeddingTask.encode` uses.

    >>> tok = ByteTokenizer(vocab_size=100, model_max_length=8)
    >>> out = tok(["ab", "abc"], padding="longest", max_length=8, truncation=True, return_tensors="pt")
    >>> out["input_ids"].tolist(), out["attention_mask"].tolist()
    ([[97, 98, 0], [97, 98, 99]], [[1, 1, 0], [1, 1, 1]])
    """

    def __init__(self, vocab_size: int, model_max_length: int = MAX_LENGTH, pad_id: int = 0) -> None:
        if vocab_size < 2:
            raise SlimError(f"cannot make token ids for a vocabulary of {vocab_size}")
        self.vocab_size = vocab_size
        self.model_max_length = model_max_length
        self.pad_id = pad_id

    def text_ids(self, text: str) -> list[int]:
        """The ids of a whole text, untruncated (a language model's held-out stream).

        >>> ByteTokenizer(vocab_size=100).text_ids("ab")
        [97, 98]
        """
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def __call__(self, sentences: list[str], truncation: bool = True, return_tensors: str = "pt",
                 padding: str = "longest", max_length: int | None = None) -> dict[str, torch.Tensor]:
        limit = min(max_length or self.model_max_length, self.model_max_length)
        rows = [[b % self.vocab_size for b in s.encode("utf-8")][:limit] or [self.pad_id] for s in sentences]
        width = limit if padding == "max_length" else max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @classmethod
    def from_config(cls, config: dict) -> ByteTokenizer:
        """Vocabulary size, position limit and pad id from a model's config.json (as a dict).

        >>> ByteTokenizer.from_config({"vocab_size": 128, "n_positions": 64}).model_max_length
        64
        """
        vocab = config.get("vocab_size")
        if not isinstance(vocab, int):
            raise SlimError("the model config has no integer vocab_size; cannot make token ids")
        positions = [config[k] for k in POSITION_KEYS if isinstance(config.get(k), int) and config[k] > 0]
        pad = config.get("pad_token_id")
        pad = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
        return cls(vocab, min([MAX_LENGTH, *positions]), pad)


def folder_config(folder: Path) -> dict:
    """config.json of a model folder as a dict (a multimodal config's `text_config` when the top level
    has no vocabulary); `SlimError` when it is not readable JSON."""
    config = read_config(folder)
    if isinstance(config.get("text_config"), dict) and "vocab_size" not in config:
        config = config["text_config"]
    return config


def max_positions(config: dict) -> int | None:
    """The longest sequence a model's config allows (None when it names no limit).

    >>> max_positions({"n_positions": 64, "vocab_size": 10})
    64
    """
    found = [config[k] for k in POSITION_KEYS if isinstance(config.get(k), int) and not isinstance(config[k], bool)
             and config[k] > 0]
    return min(found) if found else None


def token_task(path: str | Path, sentences: list[str] | None = None) -> EmbeddingTask:
    """`hf_task` for a folder without a tokenizer: the same fidelity score on byte-level token ids.

    >>> task = token_task("path/to/llama-folder")                      # doctest: +SKIP
    >>> task.calibration(64)[0]["input_ids"].shape[0]                  # doctest: +SKIP
    32
    """

    folder = check_folder(path)
    config = folder_config(folder)
    text = list(sentences) if sentences is not None else embedded()
    task = EmbeddingTask(folder, lambda: load_hf_folder(folder), split(text, "calib"), split(text, "eval"),
                         name=folder.name)
    task.tokenizer_ = ByteTokenizer.from_config(config)
    return task
