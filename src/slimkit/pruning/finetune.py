"""Fine-tuning with held masks: the retraining half of prune-and-retrain, on `slimkit.train`'s loop.

Under `torchrun --nproc_per_node N` the loop is data-parallel (DDP): masked gradients are zero
before they are reduced, and every rank re-applies the same masks after every step, so pruned
weights stay exactly zero and the replicas end identical.

>>> history = finetune(model, task, epochs=10, masks=held)   # best epoch kept, chosen on validation
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimkit.core.task import Task
from slimkit.pruning.masks import MaskSet
from slimkit.train.loop import Hooks, LoopSettings, fit
from slimkit.train.supervised import cross_entropy, task_batches

_HINT = "; or set epochs=0"


def training_data(task: Task | None, batch_size: int, seed: int) -> list:
    """The task's labelled batches, or a one-line error saying fine-tuning needs them."""
    return task_batches(task, batch_size, seed, "fine-tuning", _HINT)(0)


def validation(task: Task | None, model: nn.Module) -> float | None:
    """Validation score when the task has one (never the test split)."""
    score = getattr(task, "validation_score", None)
    return None if score is None else float(score(model))


def finetune(model: nn.Module, task: Task | None, epochs: int, lr: float = 5e-4, batch_size: int = 32,
             seed: int = 0, masks: MaskSet | None = None,
             on_iteration: Callable[[int], None] | None = None, select_from: int = 0) -> list[float]:
    """Train `model` on `task.train_batches` with Adam, keeping `masks` held.

    `on_iteration(i)` runs before step `i` (a schedule prunes there). The learning rate is
    constant until epoch `select_from`, then decays (cosine) to zero; from that epoch on, the
    epoch with the best validation score is kept. Returns the validation scores per epoch.
    """
    masks = masks or MaskSet()
    batches = task_batches(task, batch_size, seed, "fine-tuning", _HINT)
    if epochs < 1:
        return []
    settings = LoopSettings(epochs=epochs, lr=lr, weight_decay=0.0, optimizer="adam", schedule="cosine",
                            hold=select_from, seed=None)
    validate = (lambda m: validation(task, m)) if hasattr(task, "validation_score") else None
    hooks = Hooks(before_step=on_iteration, after_step=lambda _step: masks.apply())
    with masks:
        result = fit(model, cross_entropy(task), batches, settings, validate, hooks=hooks)
    return [float("nan") if h["score"] is None else h["score"] for h in result.history]
