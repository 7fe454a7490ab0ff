"""What a student learns from: labelled batches (a task such as digits), unlabelled input batches,
or text (a list of sentences or a text file, tokenised with the teacher's tokenizer).

`as_source(data, batch_size, seed)` turns any of these into a `Source`: deterministic batches
for each epoch and, where the data has one, a validation score.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimkit.errors import SlimError
from slimkit.eval.task import Batch, Task

Target = torch.Tensor | None


@dataclass
class Source:
    """`batches(epoch)` -> [(inputs, target or None)]; `validate(student)` -> score or None."""

    batches: Callable[[int], list[tuple[Batch, Target]]]
    validate: Callable[[nn.Module], float] | None
    labelled: bool
    size: int


def _check_batches(found: list, where: str) -> None:
    if not found:
        raise SlimError(f"no training data: {where} gave no batches")


def _task_source(task: Task, batch_size: int, seed: int) -> Source:
    try:
        first = task.train_batches(batch_size, seed)
    except NotImplementedError:
        first = None
    if first is None:
        calib = task.calibration(4096)
        _check_batches(calib, f"task {task.name!r}")
        return _batch_list_source([(b, None) for b in calib], seed, None)
    _check_batches(first, f"task {task.name!r}")
    validate = getattr(task, "validation_score", None)
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
    from slimkit.zoo.corpus import read_sentences

    return read_sentences(path)


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
                seed: int) -> Source:
    """Sentences shuffled each epoch, cut into batches and tokenised on the fly."""

    def batches(epoch: int) -> list[tuple[Batch, Target]]:
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed + epoch))
        chunks = order.split(batch_size)
        return [(encode([texts[i] for i in chunk]), None) for chunk in chunks]

    return Source(batches, None, False, len(texts))
