"""Calibration observers: watch activations, then choose a symmetric int8 clipping range.

All observers keep the exact max |x| and a histogram of |x| (re-binned when the max grows), and
differ only in how they pick the threshold T (the int8 scale is T / 127):

- `minmax`: T = max |x| (no clipping);
- `percentile`: the `percentile`-th percentile of |x|;
- `mse`: the T minimizing the expected squared error of clipping + rounding;
- `kl`: the T minimizing the KL divergence between the histogram and its 8-bit version
  (TensorRT's entropy calibration).

>>> obs = make_observer("kl")
>>> for batch in activations: obs.update(batch)
>>> scale = obs.scale()          # float, for int8 codes in [-127, 127]
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch

from slimkit.core.errors import ConfigError
from slimkit.dist.collectives import all_reduce_float_max, all_reduce_int, all_reduce_sum, is_distributed

BINS = 2048
LEVELS = 128  # positive int8 levels, 0..127


class ObserverKind(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    KL = "kl"


class Observer:
    """Running max |x| and histogram of |x| over everything passed to `update`."""

    def __init__(self, kind: ObserverKind | str = ObserverKind.MINMAX, percentile: float = 99.99):
        self.kind = ObserverKind(kind)
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile must lie in (0, 100], got {percentile}")
        self.percentile = percentile
        self.max_ = 0.0
        self.hist_ = torch.zeros(BINS, dtype=torch.float64)
        self.count_ = 0

    def update(self, x: torch.Tensor) -> None:
        a = x.detach().float().abs().reshape(-1)
        a = a[torch.isfinite(a)]
        if a.numel() == 0:
            return
        top = float(a.max())
        if top > self.max_:
            self._rebin(top)
        if self.max_ > 0:
            self.hist_ += torch.histc(a, BINS, 0.0, self.max_).double()
        self.count_ += a.numel()

    def _rebin(self, new_max: float) -> None:
        """Stretch the range to `new_max`, moving old counts to the bins that hold their centres."""
        if self.max_ > 0 and self.hist_.sum() > 0:
            centres = (torch.arange(BINS, dtype=torch.float64) + 0.5) * (self.max_ / BINS)
            idx = (centres / new_max * BINS).long().clamp_(0, BINS - 1)
            self.hist_ = torch.zeros(BINS, dtype=torch.float64).index_add_(0, idx, self.hist_)
        self.max_ = new_max

    def all_reduce(self) -> Observer:
        """Merge with the other ranks of an initialised process group (no-op in one process).

        max |x| is reduced with MAX; each rank re-bins its histogram to that common range (as
        `update` does when the max grows), then histograms and counts are summed. Every rank ends
        with the same observer, hence the same scale. `minmax` equals the single-process result
        exactly; the histogram kinds do whenever the re-binning is the same (e.g. each rank's first
        batch holds the global max), and otherwise differ by at most the usual re-binning error.

        >>> obs.all_reduce().scale()          # the same on every rank
        """

        if is_distributed():
            top = all_reduce_float_max(self.max_)
            if top > self.max_:
                self._rebin(top)
            all_reduce_sum(self.hist_)
            self.count_ = all_reduce_int(self.count_)
        return self

    def threshold(self) -> float:
        if self.count_ == 0:
            raise ConfigError("observer saw no data: calibration data is empty")
        if self.max_ == 0 or self.kind is ObserverKind.MINMAX:
            return self.max_
        if self.kind is ObserverKind.PERCENTILE:
            cdf = torch.cumsum(self.hist_, 0) / self.hist_.sum()
            k = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100, dtype=torch.float64)))
            return min(self.max_, (k + 1) * self.max_ / BINS)
        if self.kind is ObserverKind.MSE:
            return self._best(_mse_cost)
        return self._best(_kl_cost)

    def _best(self, cost) -> float:
        # numpy: thousands of tiny ops, which torch would hand to its thread pool one by one
        hist = self.hist_.numpy()
        width = self.max_ / BINS
        centres = (np.arange(BINS) + 0.5) * width
        best_t, best_c = self.max_, float("inf")
        for stop in range(LEVELS, BINS + 1, 16):
            c = cost(hist, centres, stop, stop * width)
            if c < best_c:
                best_t, best_c = stop * width, c
        return best_t

    def scale(self) -> float:
        """int8 scale: threshold / 127 (never zero)."""
        return max(self.threshold(), 1e-12) / 127.0


def _mse_cost(hist: np.ndarray, centres: np.ndarray, _stop: int, t: float) -> float:
    step = t / 127
    clipped = np.clip(centres - t, 0, None)
    rounding = np.where(centres < t, step * step / 12, 0.0)
    return float((hist * (clipped**2 + rounding)).sum())


def _kl_cost(hist: np.ndarray, _centres: np.ndarray, stop: int, _t: float) -> float:
    """KL(P || Q): P = histogram clipped at `stop` bins (outliers added to the last bin), Q = the
    histogram inside the range merged into 128 levels, spread back over its non-empty bins."""
    inside = hist[:stop]
    p = inside.copy()
    p[-1] += hist[stop:].sum()
    level = np.arange(stop) * LEVELS // stop                       # bin -> int8 level
    nonzero = (inside > 0).astype(np.float64)
    total = np.bincount(level, weights=inside, minlength=LEVELS)
    count = np.bincount(level, weights=nonzero, minlength=LEVELS)
    q = nonzero * (total / np.maximum(count, 1))[level]
    mask = p > 0
    p, q = p[mask] / p.sum(), q[mask] / q.sum()
    return float((p * np.log(p / np.maximum(q, 1e-12))).sum())


def make_observer(kind: ObserverKind | str = "minmax", percentile: float = 99.99) -> Observer:
    """An observer of the given kind (`minmax`, `percentile`, `mse`, `kl`)."""
    return Observer(kind, percentile)
