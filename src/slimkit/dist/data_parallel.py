"""Data-parallel training helpers for `slimkit.train.loop.fit`; in one process each is a no-op or
the plain computation.

Under torchrun every rank walks the same list of batches and takes rows ``rank::N`` of each. A
rank's mean loss is weighted by ``N * (its rows / the batch's rows)``, so averaging gradients over
ranks (DDP, or `average_grads_` for tensors that are not module parameters) gives exactly the
single-process gradient of the whole batch's mean, whatever the shard sizes.

>>> objective = data_parallel(objective)                    # DDP under torchrun, the module alone else
>>> inputs, target, weight = shard_rows(inputs, target)     # this rank's rows and its loss weight
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from slimkit.core.task import Batch
from slimkit.dist.collectives import all_reduce_sum, world


def shard_rows(inputs: Batch, target: torch.Tensor | None, rank: int | None = None,
               size: int | None = None) -> tuple[Batch, torch.Tensor | None, float]:
    """This rank's rows of a batch and the weight of its mean loss (1.0 in one process); `rank`
    and `size` default to the process group's. The rows are counted on `target`, or without one
    on the first input tensor; inputs of another length pass whole.

    >>> shard_rows({"x": torch.ones(5, 2)}, torch.zeros(5), rank=1, size=2)[2]
    0.8
    """
    if rank is None or size is None:
        rank, size = world()
    if size == 1:
        return inputs, target, 1.0
    lead = target if target is not None else next(v for v in inputs.values() if isinstance(v, torch.Tensor))
    rows = int(lead.shape[0])
    part = {k: v[rank::size] if isinstance(v, torch.Tensor) and v.shape[:1] == (rows,) else v
            for k, v in inputs.items()}
    mine = len(range(rank, rows, size))
    return part, None if target is None else target[rank::size], size * mine / max(1, rows)


def data_parallel(module: nn.Module) -> nn.Module:
    """`DistributedDataParallel(module)` under an initialised group of several ranks (it
    broadcasts rank 0's parameters and buffers first), else `module` itself.

    >>> data_parallel(nn.Linear(2, 2))                    # one process: unchanged
    Linear(in_features=2, out_features=2, bias=True)
    """
    if world()[1] == 1:
        return module
    return DistributedDataParallel(module)


@torch.no_grad()
def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Every rank takes rank 0's values of `tensors` (in place; a no-op in one process).

    >>> broadcast_([torch.zeros(2)])
    """
    if world()[1] == 1:
        return
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
