"""What a student learns from: labelled batches (a task such as digits), unlabelled input batches,
or text (a list of sentences or a text file, tokenised with the teacher's tokenizer, batched by
length, optionally augmented; `text_task_source` adds embedded corpora to a text task).

`as_source(data, batch_size, seed)` turns any of these into a `Source`: deterministic batches
for each epoch and, where the data has one, a validation score.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch, Task
from slimkit.distillation.source import BUCKET, Source, Target, augment_sentence, length_batches
from slimkit.distillation.teacher_cache import cached_text_source
from slimkit.zoo import corpus
from slimkit.zoo.embedding_task import EmbeddingTask


def _check_batches(found: list, where: str) -> None:
    if not found:
        raise SlimError(f"no training data: {where} gave no batches")


def _task_source(task: Task, batch_size: int, seed: int) -> Source:
    try:
        first = task.train_batches(batch_size, seed)
    except NotImplementedError:
        first = None
    validate = getattr(task, "validation_score", None)
    if first is None:   # no labels: the teacher's outputs are the only targets
        calib = task.calibration(4096)
        _check_batches(calib, f"task {task.name!r}")
        return _batch_list_source([(b, None) for b in calib], seed, validate)
    _check_batches(first, f"task {task.name!r}")
    return Source(lambda epoch: task.train_batches(batch_size, seed + epoch) if epoch else first,
                  validate, True, sum(len(t) for _, t in first))


def _batch_list_source(items: list[tuple[Batch, Target]], seed: int,
                       validate: Callable[[nn.Module], float] | None) -> Source:
    def batches(epoch: int) -> list[tuple[Batch, Target]]:
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed + epoch))
        return [items[i] for i in order]

    labelled = all(t is not None for _, t in items)
    size = sum(len(next(iter(b.values()))) for b, _ in items)
    return Source(batches, validate, labelled, size)


def _as_pair(item: object, i: int) -> tuple[Batch, Target]:
    if isinstance(item, dict):
        return item, None
    if isinstance(item, torch.Tensor):
        return {"x": item}, None
    if isinstance(item, (tuple, list)) and len(item) == 2:
        inputs, target = item
        if isinstance(inputs, torch.Tensor):
            inputs = {"x": inputs}
        if isinstance(inputs, dict):
            return inputs, target
    raise SlimError(f"training batch #{i} is a {type(item).__name__}; expected an inputs dict, "
                    "a tensor, or an (inputs, target) pair")


def read_text(path: str | os.PathLike) -> list[str]:
    """Sentences of a UTF-8 text file, one per line (one-line SlimError when missing or empty)."""
    return corpus.read_sentences(path)


def as_source(data: object, batch_size: int = 64, seed: int = 0,
              text_encoder: Callable[[Sequence[str]], Batch] | None = None) -> Source:
    """A `Source` from a Task, a list of batches / (inputs, target) pairs, a list of sentences, or
    a path to a text file (sentences need `text_encoder`, e.g. the teacher's tokenizer)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(data, Task):
        return _task_source(data, batch_size, seed)
    if isinstance(data, (str, Path)):
        data = read_text(data)
    if data is None:
        raise SlimError("no training data given (pass a task, batches, sentences or a text file)")
    if not isinstance(data, (list, tuple)):
        raise SlimError(f"cannot train on a {type(data).__name__}; pass a task, a list of batches, "
                        "a list of sentences or a text file path")
    items = list(data)
    if not items:
        raise SlimError("no training data: the list is empty")
    if all(isinstance(s, str) for s in items):
        if text_encoder is None:
            raise SlimError("text data needs a teacher with a tokenizer")
        texts = [s for s in (t.strip() for t in items) if s]
        if not texts:
            raise SlimError("no training data: every sentence is blank")
        return text_source(texts, text_encoder, batch_size, seed)
    return _batch_list_source([_as_pair(b, i) for i, b in enumerate(items)], seed, None)


def text_source(texts: list[str], encode: Callable[[Sequence[str]], Batch], batch_size: int,
                seed: int, augment: float = 0.0, bucket: int = BUCKET) -> Source:
    """Sentences shuffled each epoch, cut into batches and tokenised on the fly.

    Each epoch shuffles the sentences, sorts every run of `bucket` batches' worth by length
    (batches pad to their longest sentence, so this saves much of the padding's compute on mixed
    text: docs/notes/distillation-choices.md),
    cuts them into batches and shuffles the batches. `augment` is the fraction of each epoch's
    sentences replaced by an `augment_sentence` variant (the teacher labels any input).

    >>> source = text_source(["A first sentence.", "A second one."], task.encode, 32, seed=0)
    >>> inputs, _ = source.batches(0)[0]
    """
    if not 0.0 <= augment <= 1.0:
        raise ValueError(f"augment must be a fraction in [0, 1], got {augment}")

    def batches(epoch: int) -> list[tuple[Batch, Target]]:
        gen = torch.Generator().manual_seed(seed + epoch)
        rng = random.Random(seed * 1_000_003 + epoch)
        chosen = [texts[i] for i in torch.randperm(len(texts), generator=gen).tolist()]
        if augment:
            chosen = [augment_sentence(s, rng, chosen) if rng.random() < augment else s for s in chosen]
        groups = length_batches(chosen, batch_size, bucket)
        order = torch.randperm(len(groups), generator=gen).tolist()
        return [(encode(groups[i]), None) for i in order]

    return Source(batches, None, False, len(texts))


def text_task_source(task: Task, corpora: Sequence[str] = (), text: str | os.PathLike | None = None,
                     batch_size: int = 32, seed: int = 0, augment: float = 0.0,
                     teacher: nn.Module | None = None, bf16: bool = False) -> Source:
    """Training text of an embedding task (its calibration sentences, plus the "calib" part of each
    embedded corpus in `corpora`, plus a user's `text` file), validated on held-out text of the
    training domains only: the task's evaluation sentences plus each added corpus's "eval" part.
    With a `teacher`, its outputs are computed once (under bfloat16 autocast with `bf16`) and
    carried by the batches (`teacher_cache.cached_text_source`).

    >>> source = text_task_source(minilm_task(), corpora=["libdocs"], batch_size=32)  # doctest: +SKIP
    """
    texts = list(task.calib_sentences)  # type: ignore[attr-defined]
    held_out: list[str] = []
    for name in corpora:
        if name not in corpus.DOMAINS or name == "other":
            raise SlimError(f"corpora: unknown training corpus {name!r} (known: "
                            f"{', '.join(d for d in corpus.DOMAINS if d != 'other')})")
        found = corpus.sentences(name)
        texts += corpus.split(found, "calib")
        held_out += corpus.split(found, "eval")
    if text is not None:
        texts += read_text(text)
    if teacher is not None:
        source = cached_text_source(texts, task.encode, teacher, batch_size, seed,  # type: ignore[attr-defined]
                                    augment, bf16)
    else:
        source = text_source(texts, task.encode, batch_size, seed, augment)  # type: ignore[attr-defined]
    source.validate = task.score
    if held_out:
        base = task  # an EmbeddingTask: same tokenizer and reference model, more held-out sentences
        check = EmbeddingTask(base.tokenizer_path, base.reference,  # type: ignore[attr-defined]
                              base.calib_sentences, base.eval_sentences + held_out,  # type: ignore[attr-defined]
                              name=f"{task.name}+{'+'.join(corpora)}")
        source.validate = check.score
    return source


__all__ = ["BUCKET", "Source", "Target", "as_source", "augment_sentence", "length_batches", "read_text",
           "text_source", "text_task_source"]
