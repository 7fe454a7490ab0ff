"""Supervised training from a Task: its labelled batches and the cross-entropy on its outputs,
in the shapes `slimkit.train.loop.fit` takes. `class_loss` is the cross-entropy every method's
training uses: labels that are no class index of the model's outputs (a user's data with ten classes
for a model with two) are a one-line `SlimError`, not torch's "Target 7 is out of bounds".

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


IGNORE_INDEX = -100   # F.cross_entropy's default: positions with this label do not count


def class_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy(logits, target)`, after checking that integer labels are class indices of
    `logits` (dimension 1): else a one-line SlimError naming the label and the model's output count.

    >>> class_loss(torch.randn(4, 2), torch.tensor([0, 1, 7, 1]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    slimkit.core.errors.SlimError: a label of the training data is 7, but the model gives 2 outputs ...
    """
    if not target.is_floating_point() and target.numel() and logits.dim() >= 2:
        classes = logits.shape[1]
        valid = (target == IGNORE_INDEX) | ((target >= 0) & (target < classes))
        if not bool(valid.all()):
            bad = int(target[~valid].reshape(-1)[0])
            raise SlimError(f"a label of the training data is {bad}, but the model gives {classes} outputs per "
                            f"sample (labels must be class indices 0-{classes - 1})")
    return nn.functional.cross_entropy(logits, target)


def cross_entropy(task: Task | None = None) -> LossFn:
    """The loss `cross_entropy(task.forward(model, inputs), target)` (`model(**inputs)` without a task).

    >>> loss = cross_entropy(task)(model, {"x": x}, labels)
    """

    def loss(model: nn.Module, inputs: Batch, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            raise SlimError("cross-entropy training needs labelled batches (inputs, target)")
        logits = task.forward(model, inputs) if task is not None else model(**inputs)
        return class_loss(logits, target)

    return loss


__all__ = ["class_loss", "cross_entropy", "task_batches"]
