"""Supervised training from a Task: its labelled batches and the cross-entropy on its outputs,
in the shapes `slimkit.train.loop.fit` takes.

>>> fit(model, cross_entropy(task), task_batches(task, 64, seed=0, what="qat"), settings)
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch, Task
from slimkit.train.loop import Batches, LossFn


def task_batches(task: Task | None, batch_size: int, seed: int, what: str, hint: str = "") -> Batches:
    """`epoch -> task.train_batches(batch_size, seed + epoch)`: a new order every epoch. Checked
    once here: a missing task, a task without labels or empty data is a one-line `SlimError`
    naming `what` needs them (`hint` is appended, e.g. "; or set epochs=0").

    >>> batches = task_batches(digits_task, 32, seed=0, what="fine-tuning")
    >>> len(batches(0))
    29
    """
    if task is None:
        raise SlimError(f"{what} needs a task with labelled training data (pass data=...){hint}")
    try:
        first = task.train_batches(batch_size, seed)
    except NotImplementedError as exc:
        raise SlimError(f"{what} needs labelled training data: {exc}{hint}") from None
    if not first:
        raise SlimError(f"{what}: the task's training data is empty")
    return lambda epoch: first if epoch == 0 else task.train_batches(batch_size, seed + epoch)


def cross_entropy(task: Task | None = None) -> LossFn:
    """The loss `cross_entropy(task.forward(model, inputs), target)` (`model(**inputs)` without a task).

    >>> loss = cross_entropy(task)(model, {"x": x}, labels)
    """

    def loss(model: nn.Module, inputs: Batch, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            raise SlimError("cross-entropy training needs labelled batches (inputs, target)")
        logits = task.forward(model, inputs) if task is not None else model(**inputs)
        return nn.functional.cross_entropy(logits, target)

    return loss


__all__ = ["cross_entropy", "task_batches"]
