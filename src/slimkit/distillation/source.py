"""What every training source is made of: `Source` (deterministic batches per epoch and an
optional validation score) and the text batching both the plain (`data`) and the teacher-cached
(`teacher_cache`) text sources use: batches by length, augmented sentences.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slimkit.core.task import Batch

Target = torch.Tensor | None


@dataclass
class Source:
    """`batches(epoch)` -> [(inputs, target or None)]; `validate(student)` -> score or None."""

    batches: Callable[[int], list[tuple[Batch, Target]]]
    validate: Callable[[nn.Module], float] | None
    labelled: bool
    size: int


BUCKET = 50  # batches per length bucket: sentences of similar length share a batch (less padding)


def length_batches(texts: list, batch_size: int, bucket: int = BUCKET, key: Callable = len) -> list[list]:
    """`texts` cut into batches, sorted by length (`key`) within each run of `bucket` batches
    (order kept otherwise); `bucket` <= 1 keeps the order as it is.

    >>> length_batches(["a b c", "a", "a b"], 2, bucket=2)
    [['a', 'a b'], ['a b c']]
    """
    span = batch_size * max(1, bucket)
    out: list[list] = []
    for start in range(0, len(texts), span):
        run = texts[start:start + span]
        if bucket > 1:
            run = sorted(run, key=key)
        out += [run[i:i + batch_size] for i in range(0, len(run), batch_size)]
    return out


def augment_sentence(sentence: str, rng: random.Random, pool: Sequence[str] = ()) -> str:
    """A variant of `sentence` for the teacher to label: words dropped (each with p = 0.15), two
    spans swapped, or its first part joined to the second part of a sentence from `pool`.

    >>> augment_sentence("one two three four five six", random.Random(0)) != "one two three four five six"
    True
    """
    words = sentence.split()
    if len(words) < 4:
        return sentence
    kind = rng.randrange(3 if pool else 2)
    if kind == 0:
        kept = [w for w in words if rng.random() >= 0.15]
        if len(kept) == len(words):
            del kept[rng.randrange(len(kept))]
        return " ".join(kept if len(kept) >= 3 else words[:3])
    if kind == 1:
        cut = rng.randrange(1, len(words))
        return " ".join(words[cut:] + words[:cut])
    other = pool[rng.randrange(len(pool))].split()
    head = words[:rng.randrange(2, len(words))]
    tail = other[rng.randrange(len(other)):] if len(other) > 1 else other
    return " ".join(head + tail)


__all__ = ["BUCKET", "Source", "Target", "augment_sentence", "length_batches"]
