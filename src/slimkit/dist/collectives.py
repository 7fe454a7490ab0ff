"""All-reduce helpers for calibration statistics; each is a no-op in a single process.

Calibration statistics are reduced as sums and counts (never averages), or as extrema, so the
result on N ranks that each saw 1/N of the data equals the single-process result on all of it:

- GPTQ Hessians: sum of X^T X and the number of rows (`quant/gptq.py`);
- APoZ and activation means: per-channel zero counts / sums and totals (`prune/importance.py`);
- observer ranges: max |x| (MAX), then histograms re-binned to that common range and summed
  (`quant/observers.py`);
- activation second moments for activation-aware low-rank: sum of x x^T and counts (`share/`).

Under an initialised process group (torchrun), `shard(batches)` keeps every world-size-th
calibration batch starting at this rank, so the data set is split across processes.

>>> init()                                 # under torchrun: join the group (gloo / NCCL)
>>> h = all_reduce_sum(h)                  # in place; returns the same tensor
>>> n = all_reduce_int(n)                  # a Python int summed over ranks
>>> mine = shard(task.calibration(512))    # batch i goes to rank i % world_size
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, (0, 1) without one.

    >>> world()
    (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init() -> bool:
    """Join the process group torchrun describes (its environment: RANK, WORLD_SIZE, MASTER_ADDR,
    ...), with NCCL and this rank's GPU (LOCAL_RANK) when CUDA is available, else gloo; at exit
    all ranks leave together. False (and nothing done) when not launched by torchrun. Idempotent.

    >>> init()                                  # a plain `python script.py`
    False
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_group)
    return True


def _leave_group() -> None:
    """At exit, leave the group slimkit joined together with the other ranks: a rank that exits
    while another still tears down gloo can make that one abort (SIGABRT)."""
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        pass


def is_main() -> bool:
    """True on rank 0 (or without a process group): the process that should write files.

    >>> is_main()
    True
    """
    return world()[0] == 0


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised.

    >>> is_distributed()
    False
    """
    return world()[1] > 1


def _comm_device() -> torch.device:
    """Where the backend wants tensors: the current GPU for NCCL, the CPU for gloo."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor: torch.Tensor, op_name: str) -> torch.Tensor:
    if not is_distributed():
        return tensor
    import torch.distributed as dist

    op = getattr(dist.ReduceOp, op_name)
    device = _comm_device()
    if tensor.device == device and tensor.is_contiguous():
        dist.all_reduce(tensor, op=op)
        return tensor
    buf = tensor.detach().to(device).contiguous()
    dist.all_reduce(buf, op=op)
    tensor.copy_(buf)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (returns it). Use float64 or integer tensors for
    counts and large sums so the order of the ranks does not show in the result.

    >>> all_reduce_sum(torch.ones(2))          # one process: unchanged
    tensor([1., 1.])
    """
    return _all_reduce(tensor, "SUM")


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over all ranks, in place.

    >>> all_reduce_max(torch.tensor([3.0]))
    tensor([3.])
    """
    return _all_reduce(tensor, "MAX")


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum over all ranks, in place.

    >>> all_reduce_min(torch.tensor([3.0]))
    tensor([3.])
    """
    return _all_reduce(tensor, "MIN")


def all_reduce_int(value: int) -> int:
    """A Python int summed over all ranks (exact: int64).

    >>> all_reduce_int(7)
    7
    """
    if not is_distributed():
        return value
    return int(all_reduce_sum(torch.tensor([value], dtype=torch.int64))[0])


def all_reduce_float_max(value: float) -> float:
    """A Python float maximised over all ranks (float64).

    >>> all_reduce_float_max(0.5)
    0.5
    """
    if not is_distributed():
        return value
    return float(all_reduce_max(torch.tensor([value], dtype=torch.float64))[0])


def shard(batches: Sequence[T]) -> list[T]:
    """This rank's calibration batches: every world-size-th one, starting at the rank (all of them
    in one process). A rank may get none when there are fewer batches than ranks.

    >>> shard([1, 2, 3])
    [1, 2, 3]
    """
    rank, size = world()
    return list(batches)[rank::size]


def reduce_keyed(keys: Sequence[str], sums: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
    """All-reduce per-key 1-D sums and int counts in place, in the order of `keys` (the same on
    every rank). Sums come back as float64 (exact for counts below 2**53). A key missing on this
    rank (its module was never reached here) takes part as zeros and is added if any rank had it.

    >>> sums, counts = {"fc1": torch.ones(3)}, {"fc1": 4}
    >>> reduce_keyed(["fc1"], sums, counts); counts["fc1"]
    4
    """
    if not is_distributed():
        return
    for key in keys:
        mine = sums.get(key)
        # agree on the length first (-1: absent on this rank)
        size = all_reduce_max(torch.tensor([-1 if mine is None else mine.numel()], dtype=torch.int64))
        total = all_reduce_int(counts.get(key, 0))
        if int(size[0]) < 0:
            continue  # no rank reached this key
        buf = torch.zeros(int(size[0]), dtype=torch.float64) if mine is None else mine.double().reshape(-1)
        sums[key] = all_reduce_sum(buf)
        counts[key] = total
