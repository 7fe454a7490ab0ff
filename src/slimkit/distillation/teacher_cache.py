"""Teacher outputs computed once and reused every epoch (text distillation of sentence encoders).

The teacher's forward pass is a large share of a distillation step (docs/notes/distillation-choices.md).
On a fixed training text its outputs never change, so `cached_text_source` runs the teacher once over
every sentence (sorted by token count, so batches hardly pad), keeps each sentence's last-layer token
states in one flat float16 tensor (2 bytes per token and unit of width), and serves batches whose
target is the teacher's token states `(batch, tokens, width)` padded with zeros. The objective then
runs only the student.

>>> source = cached_text_source(sentences, task.encode, teacher, batch_size=32, seed=0)  # doctest: +SKIP
>>> inputs, teacher_states = source.batches(0)[0]                                       # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch
from slimkit.distillation.source import BUCKET, Source, Target, augment_sentence, length_batches
from slimkit.zoo.embedding_task import last_hidden_state

TEACHER_BATCH = 64
ENCODE_CHUNK = 1024


class LazyBatches(Sequence):
    """An epoch's batches, each made when it is read (an epoch of token states would not fit
    in memory as one list)."""

    def __init__(self, groups: list[list[int]], make: Callable[[list[int]], tuple[Batch, Target]]):
        self.groups, self.make = groups, make

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.make(g) for g in self.groups[i]]
        return self.make(self.groups[i])


def token_counts(texts: Sequence[str], encode: Callable[[Sequence[str]], Batch]) -> list[int]:
    """Tokens (after truncation) of each sentence, as `encode` pads and truncates them."""
    counts: list[int] = []
    for start in range(0, len(texts), ENCODE_CHUNK):
        counts += encode(list(texts[start:start + ENCODE_CHUNK]))["attention_mask"].sum(1).tolist()
    return [int(c) for c in counts]


@torch.no_grad()
def teacher_states(teacher: nn.Module, texts: Sequence[str], encode: Callable[[Sequence[str]], Batch],
                   counts: Sequence[int], bf16: bool = False, batch_size: int = TEACHER_BATCH
                   ) -> tuple[torch.Tensor, list[int]]:
    """(flat float16 token states `(sum(counts), width)`, start row of each sentence): the
    teacher's last-layer states of every real token, in length-sorted batches, under bfloat16
    autocast with `bf16` (faster on CPUs, and close to fp32: docs/notes/distillation-choices.md)."""
    order = sorted(range(len(texts)), key=lambda i: counts[i])
    starts = [0] * len(texts)
    total = 0
    for i in range(len(texts)):
        starts[i] = total
        total += counts[i]
    flat: torch.Tensor | None = None
    device = next((p.device.type for p in teacher.parameters()), "cpu")
    was_training = teacher.training
    teacher.eval()
    try:
        for begin in range(0, len(order), batch_size):
            chunk = order[begin:begin + batch_size]
            inputs = encode([texts[i] for i in chunk])
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                hidden = last_hidden_state(teacher(**inputs)).float()
            if flat is None:
                flat = torch.empty(total, hidden.shape[-1], dtype=torch.float16)
            for row, i in enumerate(chunk):
                flat[starts[i]:starts[i] + counts[i]] = hidden[row, :counts[i]].to(torch.float16)
    finally:
        teacher.train(was_training)
    if flat is None:
        raise ValueError("cache_teacher: no training sentences to run the teacher on")
    return flat, starts


def cached_text_source(texts: list[str], encode: Callable[[Sequence[str]], Batch], teacher: nn.Module,
                       batch_size: int, seed: int, augment: float = 0.0, bf16: bool = False,
                       bucket: int = BUCKET) -> Source:
    """A `Source` over `texts` whose batches carry the teacher's token states as their target.

    Each epoch shuffles the sentences, sorts every run of `bucket` batches' worth by token count,
    cuts them into batches and shuffles the batches (as `data.text_source`). `augment` adds that
    fraction of the sentences once more as an `augment_sentence` variant (drawn once, seeded), so
    the teacher labels the variants in the same single pass. `bf16`: the teacher's pass under
    bfloat16 autocast.

    >>> source = cached_text_source(["A first sentence.", "A second one."], task.encode, teacher,
    ...                             32, seed=0)                                   # doctest: +SKIP
    """
    if not texts:
        raise SlimError("no training data: no sentences to distill on")
    if not 0.0 <= augment <= 1.0:
        raise ValueError(f"augment must be a fraction in [0, 1], got {augment}")
    texts = list(texts)
    if augment:
        rng = random.Random(seed)
        picked = rng.sample(range(len(texts)), round(augment * len(texts)))
        texts += [augment_sentence(texts[i], rng, texts) for i in picked]
    counts = token_counts(texts, encode)
    flat, starts = teacher_states(teacher, texts, encode, counts, bf16)

    def make(group: list[int]) -> tuple[Batch, Target]:
        inputs = encode([texts[i] for i in group])
        target = torch.zeros(len(group), inputs["attention_mask"].shape[1], flat.shape[1])
        for row, i in enumerate(group):
            target[row, :counts[i]] = flat[starts[i]:starts[i] + counts[i]]
        return inputs, target

    def batches(epoch: int) -> LazyBatches:
        gen = torch.Generator().manual_seed(seed + epoch)
        chosen = torch.randperm(len(texts), generator=gen).tolist()
        groups = length_batches(chosen, batch_size, bucket, key=lambda i: counts[i])
        order = torch.randperm(len(groups), generator=gen).tolist()
        return LazyBatches([groups[i] for i in order], make)

    return Source(batches, None, False, len(texts))  # type: ignore[arg-type]


__all__ = ["LazyBatches", "cached_text_source", "teacher_states", "token_counts"]
