"""Data-parallel fine-tuning helpers shared by the training-time methods (prune-and-retrain, QAT,
codebook fine-tuning); in one process each is a no-op or the plain computation.

Under torchrun every rank walks the same list of batches and takes rows ``rank::N`` of each. A
rank's mean loss is weighted by ``N * (its rows / the batch's rows)``, so averaging gradients over
ranks (DDP, or `average_grads_` for tensors that are not module parameters) gives exactly the
single-process gradient of the whole batch's mean, whatever the shard sizes.

>>> objective = data_parallel(TaskLoss(model, task))     # DDP under torchrun, the module alone else
>>> loss = objective(*shard_rows(inputs, target))         # this rank's rows, weighted
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.task import Batch, Task
from slimkit.dist.collectives import all_reduce_sum, world


def shard_rows(inputs: Batch, target: torch.Tensor, rank: int | None = None,
               size: int | None = None) -> tuple[Batch, torch.Tensor, float]:
    """This rank's rows of a batch and the weight of its mean loss (1.0 in one process); `rank`
    and `size` default to the process group's.

    >>> shard_rows({"x": torch.ones(5, 2)}, torch.zeros(5), rank=1, size=2)[2]
    0.8
    """
    if rank is None or size is None:
        rank, size = world()
    rows = int(target.shape[0])
    if size == 1:
        return inputs, target, 1.0
    part = {k: v[rank::size] if isinstance(v, torch.Tensor) and v.shape[:1] == (rows,) else v
            for k, v in inputs.items()}
    mine = target[rank::size]
    return part, mine, size * int(mine.shape[0]) / max(1, rows)


class TaskLoss(nn.Module):
    """A model with its cross-entropy on the task as forward, so one DDP wrapper synchronises the
    model's gradients however `task.forward` calls the model.

    >>> TaskLoss(model, task)(inputs, target, 1.0)          # = cross_entropy(task.forward(...))
    """

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, inputs: Batch, target: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        logits = self.task.forward(self.model, inputs)
        if target.shape[0] == 0:            # a rank with no rows this step still joins the reduction
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits, target) * weight


def data_parallel(module: nn.Module) -> nn.Module:
    """`DistributedDataParallel(module)` under an initialised group of several ranks (it
    broadcasts rank 0's parameters and buffers first), else `module` itself.

    >>> data_parallel(nn.Linear(2, 2))                    # one process: unchanged
    Linear(in_features=2, out_features=2, bias=True)
    """
    if world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)


@torch.no_grad()
def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Every rank takes rank 0's values of `tensors` (in place; a no-op in one process).

    >>> broadcast_([torch.zeros(2)])
    """
    if world()[1] == 1:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.broadcast(t.data, 0)


@torch.no_grad()
def average_grads_(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor's gradient by its mean over ranks (a missing gradient counts as zeros).

    >>> average_grads_([torch.zeros(2, requires_grad=True)])
    """
    size = world()[1]
    if size == 1:
        return
    for t in tensors:
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        all_reduce_sum(t.grad).div_(size)
