"""Fine-tuning shared by the sharing methods (k-means codebooks, low-rank, hashed), on
`slimkit.train`'s loop.

Trains only the given tensors with Adam (cosine LR per epoch) on the task's labelled batches and
keeps the best validation score, the starting point included (never the test score).
`overrides()` may return replacement tensors for the model's own parameters (e.g. weights rebuilt
from shared centroids), which are fed in with `torch.func.functional_call`; `commit()` writes the
current values into the model.

Under `torchrun --nproc_per_node N` the loop is data-parallel: the trained tensors start as rank
0's and their gradients (centroids are not module parameters) are averaged over ranks directly,
each rank's loss weighted by its share of the rows; all ranks take the same step and end identical.

>>> fine_tune(model, task, [centroids], epochs=5, overrides=lambda: {"fc1.weight": c[labels]},
...           commit=write_back)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimkit.core.task import Batch, Task
from slimkit.train.loop import Hooks, LoopSettings, fit
from slimkit.train.supervised import class_loss, task_batches

SMALL_MODEL = 2_000_000  # parameters; below this, fine-tuning runs on one thread


def _loss(out: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None,
          temperature: float = 4.0) -> torch.Tensor:
    if target.is_floating_point() or out.ndim != 2:
        return nn.functional.mse_loss(out, target.to(out.dtype))
    loss = class_loss(out, target)
    if soft is not None:  # Hinton et al.'s dark knowledge, as HashedNets trains with
        kl = nn.functional.kl_div(nn.functional.log_softmax(out / temperature, 1),
                                  nn.functional.log_softmax(soft / temperature, 1),
                                  log_target=True, reduction="batchmean")
        loss = 0.5 * loss + 0.5 * temperature**2 * kl
    return loss


def fine_tune(model: nn.Module, task: Task | None, params: list[torch.Tensor], epochs: int,
              lr: float = 1e-3, seed: int = 0,
              overrides: Callable[[], dict[str, torch.Tensor]] | None = None,
              commit: Callable[[], None] | None = None,
              teacher: nn.Module | None = None, keep_best: bool = True,
              penalty: Callable[[], torch.Tensor] | None = None) -> float | None:
    """Train `params` for `epochs`; return the best validation score (None if the task has none).

    With a `teacher`, classification losses add its softened outputs (knowledge distillation).
    `keep_best=False` keeps the last epoch (training from scratch with the cosine schedule,
    where a small validation split picks epochs by noise). `penalty()` is added to every step's
    loss (a regulariser on the weights, e.g. Deep k-Means').
    """
    if epochs <= 0 or not params:
        return None
    batches = task_batches(task, 64, seed, "fine-tuning", "; or set the fine-tuning epochs to 0")
    commit = commit or (lambda: None)
    score = getattr(task, "validation_score", None) if keep_best else None

    def validate(m: nn.Module) -> float:
        with torch.no_grad():
            commit()
        return score(m)

    def loss_fn(m: nn.Module, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        if overrides is not None:
            out = torch.func.functional_call(m, overrides(), args=(), kwargs=batch)
        else:
            out = task.forward(m, batch)
        soft = None
        if teacher is not None:
            with torch.no_grad():
                soft = task.forward(teacher, batch)
        return _loss(out, target, soft)

    settings = LoopSettings(epochs=epochs, lr=lr, weight_decay=0.0, optimizer="adam", schedule="cosine-epoch",
                            seed=None, validate_start=True)
    threads, was_training = torch.get_num_threads(), model.training
    flags = {id(p): p.requires_grad for p in model.parameters()}
    try:
        if sum(p.numel() for p in model.parameters()) < SMALL_MODEL:
            torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a busy machine
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        result = fit(model, loss_fn, batches, settings, validate if score else None,
                     hooks=Hooks(penalty=penalty, params=params))
    finally:
        with torch.no_grad():
            commit()
        for p in (*params, *model.parameters()):
            p.grad = None
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
        model.train(was_training)
        torch.set_num_threads(threads)
    return result.best_score
