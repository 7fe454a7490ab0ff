"""A small fine-tuning loop shared by the sharing methods (k-means codebooks, low-rank, hashed).

Trains only the given tensors with Adam on the task's labelled batches and keeps the epoch with
the best validation score (never the test score). `overrides()` may return replacement tensors
for the model's own parameters (e.g. weights rebuilt from shared centroids), which are fed in
with `torch.func.functional_call`; `commit()` writes the current values into the model.

Under `torchrun --nproc_per_node N` (an initialised `torch.distributed` group) the same call is
data-parallel: the trained tensors start as rank 0's, every rank takes rows ``rank::N`` of each
batch, and the gradients of the trained tensors (centroids are not module parameters, so they are
all-reduced directly rather than through a DDP wrapper) are averaged with each rank's loss
weighted by its share of the rows, which is the single-process batch-mean gradient; all ranks
then take the same step and end identical.

>>> fine_tune(model, task, [centroids], epochs=5, overrides=lambda: {"fc1.weight": c[labels]},
...           commit=write_back)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimkit.dist.data_parallel import average_grads_, broadcast_, shard_rows
from slimkit.core.errors import SlimError
from slimkit.core.task import Task

SMALL_MODEL = 2_000_000  # parameters; below this, fine-tuning runs on one thread


def _loss(out: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None,
          temperature: float = 4.0) -> torch.Tensor:
    if target.is_floating_point() or out.ndim != 2:
        return nn.functional.mse_loss(out, target.to(out.dtype))
    loss = nn.functional.cross_entropy(out, target)
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
    if task is None:
        raise SlimError("fine-tuning needs a task with training data (pass data=...) or set epochs to 0")
    try:
        task.train_batches(seed=seed)
    except NotImplementedError:
        raise SlimError(f"task {task.name!r} has no labelled training data; set the fine-tuning "
                        "epochs to 0") from None
    commit = commit or (lambda: None)
    validate = getattr(task, "validation_score", None) if keep_best else None
    threads, was_training = torch.get_num_threads(), model.training
    flags = {id(p): p.requires_grad for p in model.parameters()}
    best = [p.detach().clone() for p in params]
    best_score = None
    try:
        if sum(p.numel() for p in model.parameters()) < SMALL_MODEL:
            torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a busy machine
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        broadcast_(params)                                   # under torchrun: rank 0's start
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        best_score = validate(model) if validate else None
        for epoch in range(epochs):
            model.train()
            for full, full_target in task.train_batches(seed=seed + epoch):
                batch, target, weight = shard_rows(full, full_target)
                opt.zero_grad()
                if overrides is not None:
                    out = torch.func.functional_call(model, overrides(), args=(), kwargs=batch)
                else:
                    out = task.forward(model, batch)
                soft = None
                if teacher is not None:
                    with torch.no_grad():
                        soft = task.forward(teacher, batch)
                loss = _loss(out, target, soft) * weight if target.shape[0] else out.sum() * 0.0
                if penalty is not None:
                    loss = loss + penalty()
                loss.backward()
                average_grads_(params)
                opt.step()
            sched.step()
            if validate:
                with torch.no_grad():
                    commit()
                model.eval()
                score = validate(model)
                if score > best_score:
                    best_score, best = score, [p.detach().clone() for p in params]
            else:
                best = [p.detach().clone() for p in params]
    finally:
        with torch.no_grad():
            for p, b in zip(params, best, strict=True):
                p.copy_(b)
                p.grad = None
            commit()
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
            p.grad = None
        model.train(was_training)
        torch.set_num_threads(threads)
    return best_score
