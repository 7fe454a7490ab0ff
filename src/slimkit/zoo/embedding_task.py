"""Sentence-embedding fidelity: how close a compressed encoder's embeddings stay to the original's.

The score is the mean cosine similarity, over 512 held-out English sentences, between the
mean-pooled embeddings of the model under test and those of the original fp32 model (computed
once per task and kept in memory). Calibration batches come from the other sentences only.

>>> from slimkit.zoo.minilm import minilm_task
>>> task = minilm_task()
>>> task.score(task.reference())                 # the original against itself   # doctest: +SKIP
1.0
>>> batch = task.example_inputs(32)              # 32 real sentences x 40 tokens  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch, Task
from slimkit.zoo.config_limits import position_limit
from slimkit.zoo.corpus import sentences as embedded
from slimkit.zoo.corpus import split
from slimkit.zoo.hf import check_folder, first_line, load_hf_folder, quiet

SEQ_LEN = 40          # example / benchmark inputs: batch x 40 tokens
MAX_LENGTH = 128      # scoring and calibration: truncate longer sentences
SCORE_BATCH = 64
CALIB_BATCH = 32


def last_hidden_state(output: Any) -> torch.Tensor:
    """The token states in a model's output: a HF output object, a dict, a tuple or a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, dict):
        hidden = output.get("last_hidden_state")
    if hidden is None and isinstance(output, (tuple, list)) and output:
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"cannot find token states in a model output of type {type(output).__name__}")
    return hidden


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states over real (unmasked) tokens, in fp32: (batch, dim)."""
    mask = attention_mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block, each one's train/eval flag restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in flags.items():
            module.training = training


TOKENIZER_FILES = ("tokenizer.json", "vocab.*", "*.model", "merges.txt")


def _load_tokenizer(folder: Path) -> Any:
    """`AutoTokenizer` of a folder, offline; `SlimError` if the folder has no vocabulary (transformers
    would otherwise quietly build an empty tokenizer that maps every word to [UNK])."""

    if not any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
        raise SlimError(f"{str(folder)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    with quiet() as transformers:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        except (OSError, ValueError, TypeError) as exc:
            raise SlimError(f"cannot load the tokenizer in {str(folder)!r}: {first_line(exc)}") from None
    if tokenizer.pad_token is None:  # decoder tokenizers (GPT-2, Llama): padded positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
    if tokenizer.pad_token is None:
        raise SlimError(f"the tokenizer in {str(folder)!r} has no pad, eos, unk or bos token to pad with")
    positions = _position_limit(folder)   # inputs never longer than the model's position table
    if positions is not None and positions < getattr(tokenizer, "model_max_length", MAX_LENGTH):
        tokenizer.model_max_length = positions
    return tokenizer


def _position_limit(folder: Path) -> int | None:
    """The position limit in the folder's config.json (`config_limits.position_limit`), if it has one."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    try:
        return position_limit(config) if isinstance(config, dict) else None
    except SlimError as exc:
        raise SlimError(f"{str(folder)!r}: {exc}") from None


class EmbeddingTask(Task):
    """Fidelity of a sentence encoder to its original: mean cosine of mean-pooled embeddings.

    `__init__` only stores its arguments; the tokenizer, the tokenized batches and the reference
    embeddings are made on first use and kept (`tokenizer_`, `reference_embeddings_`).

    >>> task = EmbeddingTask("path/to/model-folder", load_original,            # doctest: +SKIP
    ...                      calib_sentences=calib, eval_sentences=held_out, name="my-bert")
    >>> task.score(compressed_model)                                           # doctest: +SKIP
    0.9987
    """

    score_name = "fidelity"

    def __init__(self, tokenizer_path: str | Path, reference: Callable[[], nn.Module],
                 calib_sentences: list[str], eval_sentences: list[str], name: str = "embedding") -> None:
        if not calib_sentences or not eval_sentences:
            raise ValueError("EmbeddingTask needs at least one calibration and one evaluation sentence")
        self.tokenizer_path = tokenizer_path
        self.reference = reference
        self.calib_sentences = list(calib_sentences)
        self.eval_sentences = list(eval_sentences)
        self.name = name
        self.tokenizer_: Any = None
        self.reference_embeddings_: torch.Tensor | None = None
        self._eval_batches: list[Batch] | None = None
        self._eval_order: list[int] = []

    # ------------------------------------------------------------ inputs

    def encode(self, sentences: list[str], length: int | None = None) -> Batch:
        """Token ids and attention mask: padded to exactly `length` tokens, or to the longest
        sentence (at most 128 tokens, or the tokenizer's limit if lower) when `length` is None."""
        if self.tokenizer_ is None:
            self.tokenizer_ = _load_tokenizer(Path(self.tokenizer_path))
        limit = min(MAX_LENGTH, getattr(self.tokenizer_, "model_max_length", MAX_LENGTH))
        length = min(length, limit) if length else None   # a short position table caps even fixed lengths
        encoded = self.tokenizer_(
            list(sentences), truncation=True, return_tensors="pt",
            padding="max_length" if length else "longest", max_length=length or limit)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def example_inputs(self, batch_size: int) -> Batch:
        """`batch_size` real sentences (calibration part), padded or truncated to 40 tokens."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pool = self.calib_sentences
        return self.encode([pool[i % len(pool)] for i in range(batch_size)], length=SEQ_LEN)

    def calibration(self, n: int = 256) -> list[Batch]:
        """The first `n` calibration sentences (never evaluation ones) in batches of 32, each
        padded to its longest sentence (at most 128 tokens). Fewer if the part is smaller."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        chosen = self.calib_sentences[:n]
        return [self.encode(chosen[i:i + CALIB_BATCH]) for i in range(0, len(chosen), CALIB_BATCH)]

    def eval_batches(self) -> list[Batch]:
        """The evaluation sentences, tokenized once, in batches of 64 (at most 128 tokens each).

        Batches group sentences of similar length (less padding, so much less compute:
        docs/notes/distillation-choices.md); `embed_all` puts the embeddings back in sentence order.
        """
        if self._eval_batches is None:
            sents = self.eval_sentences
            lengths = self.encode(sents)["attention_mask"].sum(1).tolist()
            self._eval_order = sorted(range(len(sents)), key=lambda i: (lengths[i], i))
            self._eval_batches = [self.encode([sents[i] for i in self._eval_order[j:j + SCORE_BATCH]])
                                  for j in range(0, len(sents), SCORE_BATCH)]
        return self._eval_batches

    # ------------------------------------------------------------ scoring

    def embed(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean-pooled sentence embeddings (fp32, on the model's device) for one batch."""
        device = _device(model)
        batch = {k: v.to(device) for k, v in batch.items()}
        return mean_pool(last_hidden_state(self.forward(model, batch)), batch["attention_mask"])

    def embed_all(self, model: nn.Module) -> torch.Tensor:
        """Embeddings of all evaluation sentences, (n_eval, dim) fp32 on the CPU, in eval mode."""
        with torch.no_grad(), _eval_mode(model):
            by_length = torch.cat([self.embed(model, b).cpu() for b in self.eval_batches()])
        out = torch.empty_like(by_length)
        out[self._eval_order] = by_length
        return out

    def reference_embeddings(self) -> torch.Tensor:
        """The original model's embeddings of the evaluation sentences, computed once per task."""
        if self.reference_embeddings_ is None:
            self.reference_embeddings_ = self.embed_all(self.reference())   # the model is dropped
        return self.reference_embeddings_

    def score(self, model: nn.Module) -> float:
        """Mean cosine similarity to the reference embeddings over the evaluation sentences.

        Clipped to [0, 1]; a sentence whose embedding is not finite counts as 0.
        """
        reference = self.reference_embeddings()
        with torch.inference_mode():
            cosines = F.cosine_similarity(self.embed_all(model), reference, dim=-1)
            value = float(torch.nan_to_num(cosines, nan=0.0, posinf=0.0, neginf=0.0).mean())
        return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


# ------------------------------------------------------------ factories


def hf_task(path: str | Path, sentences: list[str] | None = None) -> EmbeddingTask:
    """Fidelity to the pretrained model of a Hugging Face folder (which must hold its tokenizer).

    `sentences` (e.g. from `slimkit.zoo.corpus.read_sentences`) default to the embedded corpus.

    >>> task = hf_task("path/to/bert-folder")                         # doctest: +SKIP
    """

    folder = check_folder(path)
    text = list(sentences) if sentences is not None else embedded()
    calib, held_out = split(text, "calib"), split(text, "eval")
    if not calib or not held_out:
        raise SlimError(f"need at least 2 distinct sentences to score {str(path)!r}, got {len(set(text))}")
    return EmbeddingTask(folder, lambda: load_hf_folder(folder), calib, held_out, name=folder.name)
