"""Fine-tuning with held masks: the retraining half of prune-and-retrain.

Under `torchrun --nproc_per_node N` (an initialised `torch.distributed` group, gloo on CPU, NCCL
on GPUs) the same call trains with `DistributedDataParallel` (`slimkit.dist.data_parallel`):
every rank takes rows ``rank::N`` of each batch, the averaged gradient equals the single-process
batch mean, masked gradients are zero before they are reduced, and every rank re-applies the same
masks, so pruned weights stay exactly zero and the replicas end identical.

>>> history = finetune(model, task, epochs=10, masks=held)   # best epoch kept, chosen on validation
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from slimkit.dist.data_parallel import TaskLoss, data_parallel, shard_rows
from slimkit.core.errors import SlimError
from slimkit.core.task import Task
from slimkit.pruning.masks import MaskSet


def training_data(task: Task | None, batch_size: int, seed: int) -> list:
    """The task's labelled batches, or a one-line error saying fine-tuning needs them."""
    if task is None:
        raise SlimError("fine-tuning needs a task with training data (pass data=...) or epochs=0")
    try:
        return task.train_batches(batch_size, seed)
    except NotImplementedError as exc:
        raise SlimError(f"cannot fine-tune: {exc}; set epochs=0") from None


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
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    per_epoch = len(training_data(task, batch_size, seed))
    objective = data_parallel(TaskLoss(model, task))      # DDP under torchrun
    start, span = select_from * per_epoch, max(1, (epochs - select_from) * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i < start else 0.5 * (1 + math.cos(math.pi * min(1.0, (i - start) / span))))
    history: list[float] = []
    best, best_score = None, -1.0
    step = 0
    with masks:
        for epoch in range(epochs):
            model.train()
            for inputs, target in training_data(task, batch_size, seed + epoch):
                if on_iteration is not None:
                    on_iteration(step)
                opt.zero_grad()
                loss = objective(*shard_rows(inputs, target))
                loss.backward()
                opt.step()
                sched.step()
                masks.apply()
                step += 1
            model.eval()
            score = validation(task, model)
            history.append(score if score is not None else float("nan"))
            if epoch >= select_from and score is not None and score > best_score:
                best, best_score = copy.deepcopy(model.state_dict()), score
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return history
