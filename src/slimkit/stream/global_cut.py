"""Global magnitude pruning over a checkpoint read tensor by tensor: one exact threshold for all.

Pruning a fraction `s` of all selected weights together needs the k-th smallest |w| over every
tensor (k = round(s * total)), which `torch.kthvalue` would find only with all of them in memory.
Here it is found exactly in two streaming passes with a fixed 65,536-bin histogram (radix
selection): |w| as float32 is non-negative, so its bit pattern read as an int32 orders like its
value. Pass 1 counts the upper 16 bits of every |w| and finds the bin holding the k-th; pass 2
counts the lower 16 bits of the values in that bin, which gives the k-th value `t` itself. The
encode pass then prunes every |w| < t and, of the |w| == t, as many as are still needed in
checkpoint order (position order within a tensor), exactly as `slimkit.pruning.masks` breaks ties
over the tensors concatenated in that order.

>>> cut = GlobalCut.fit(ck, [it for it in ck.items() if plan.selected(...)], 0.9)
>>> prune = cut.take(w)          # how many of this tensor's weights to drop, in order
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from slimkit.nn.codec_affine import matrix_shape
from slimkit.stream.checkpoint import Checkpoint, Item, iter_row_blocks

BINS = 1 << 16


def _bits(block: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of |block| as float32 (ordered like the values)."""
    return block.float().abs().reshape(-1).view(torch.int32)


def _blocks(ck: Checkpoint, items: list[Item], block_bytes: int) -> Iterator[torch.Tensor]:
    for item in items:
        rows, cols = matrix_shape(item.shape)
        for r0, r1 in iter_row_blocks(rows, cols, item.itemsize, block_bytes):
            yield ck.rows(item, r0, r1)
            ck.release(item, r0 * cols * item.itemsize, r1 * cols * item.itemsize)


def _select(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """(bin holding the k-th smallest value, 1-based; count of values in the bins below it)."""
    cum = counts.cumsum(0)
    b = int(torch.searchsorted(cum, torch.tensor(k, dtype=cum.dtype)))
    return b, int(cum[b - 1]) if b else 0


@dataclass
class GlobalCut:
    """The exact global threshold `t`, and how many weights equal to it are still to be pruned."""

    threshold: float
    ties_left: int
    total: int
    prune: int

    @classmethod
    def fit(cls, ck: Checkpoint, items: list[Item], sparsity: float, block_bytes: int = 4 << 20) -> GlobalCut:
        """Two passes over `items` (read from the maps, pages released behind) find the threshold."""
        total = sum(math.prod(it.shape) for it in items)
        k = round(sparsity * total)
        if k <= 0:
            return cls(-1.0, 0, total, 0)
        high = torch.zeros(BINS, dtype=torch.int64)
        for block in _blocks(ck, items, block_bytes):
            high += torch.bincount(_bits(block) >> 16, minlength=BINS)
        hb, below = _select(high, k)
        low = torch.zeros(BINS, dtype=torch.int64)
        for block in _blocks(ck, items, block_bytes):
            bits = _bits(block)
            low += torch.bincount(bits[(bits >> 16) == hb] & 0xFFFF, minlength=BINS)
        lb, below_low = _select(low, k - below)
        value = torch.tensor((hb << 16) | lb, dtype=torch.int32).view(torch.float32)
        smaller = below + below_low
        return cls(float(value), k - smaller, total, k)

    def take(self, w: torch.Tensor) -> int:
        """How many of `w`'s weights to prune (every |w| < t, then ties while some are left);
        call once per tensor, in checkpoint order."""
        if self.prune == 0:
            return 0
        a = w.float().abs()
        t = torch.tensor(self.threshold, dtype=torch.float32)
        smaller, ties = int((a < t).sum()), int((a == t).sum())
        used = min(ties, self.ties_left)
        self.ties_left -= used
        return smaller + used
