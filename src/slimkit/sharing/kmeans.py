"""1-D k-means for weight sharing: initialisations, Lloyd's algorithm and an exact optimal solver.

Pure array math (numpy, float64); nothing here walks modules.

>>> import numpy as np
>>> w = np.random.default_rng(0).normal(size=1000)
>>> fit = cluster_1d(w, 8, init="linear", solver="lloyd")
>>> fit.centroids.shape, fit.labels.max() < 8
((8,), True)
>>> cluster_1d(w, 8, solver="optimal").sse <= fit.sse + 1e-9
True

The optimal solver is the classic dynamic programme over sorted values (Wang & Song's
Ckmeans.1d.dp): `D[m][i] = min_j D[m-1][j-1] + cost(j..i)`, whose argmin is monotone in `i`,
so each row is filled by divide and conquer in O(n log n); here one whole recursion level is
evaluated at once with numpy, so the solver runs in O(k n log n) array work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INITS = ("linear", "density", "kmeans++")
SOLVERS = ("lloyd", "optimal")


@dataclass(frozen=True)
class Clustering:
    """Sorted centroids, one label per input value (same order as the input), and the SSE."""

    centroids: np.ndarray
    labels: np.ndarray
    sse: float
    iterations: int = 0


def init_centroids(values: np.ndarray, k: int, method: str = "linear", seed: int = 0) -> np.ndarray:
    """`k` starting centroids (sorted): evenly spaced over [min, max] ("linear", Han et al.'s
    choice), quantiles of the value distribution ("density"), or D^2 sampling ("kmeans++")."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot cluster an empty array")
    if method == "linear":
        return np.linspace(x.min(), x.max(), k)
    if method == "density":
        return np.quantile(x, (np.arange(k) + 0.5) / k)
    if method == "kmeans++":
        rng = np.random.default_rng(seed)
        centers = [x[rng.integers(x.size)]]
        dist = (x - centers[0]) ** 2
        for _ in range(1, k):
            total = dist.sum()
            if total <= 0:
                break
            c = x[min(np.searchsorted(np.cumsum(dist), rng.random() * total), x.size - 1)]
            centers.append(c)
            dist = np.minimum(dist, (x - c) ** 2)
        return np.sort(np.asarray(centers))
    raise ValueError(f"unknown k-means init {method!r} (choose from {', '.join(INITS)})")


class _Sorted:
    """Distinct sorted values with multiplicities and prefix sums, for O(1) segment costs."""

    def __init__(self, values: np.ndarray):
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        self.x, self.inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        w = counts.astype(np.float64)
        self.s0 = np.concatenate([[0.0], np.cumsum(w)])
        self.s1 = np.concatenate([[0.0], np.cumsum(w * self.x)])
        self.s2 = np.concatenate([[0.0], np.cumsum(w * self.x * self.x)])

    def cost(self, j: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Sum of squared deviations of the segment x[j..i] (inclusive) from its mean."""
        n0 = self.s0[i + 1] - self.s0[j]
        n1 = self.s1[i + 1] - self.s1[j]
        return np.maximum(self.s2[i + 1] - self.s2[j] - n1 * n1 / n0, 0.0)

    def means(self, starts: np.ndarray) -> np.ndarray:
        ends = np.append(starts[1:], self.x.size)
        return (self.s1[ends] - self.s1[starts]) / (self.s0[ends] - self.s0[starts])


def _finish(data: _Sorted, starts: np.ndarray, iterations: int = 0) -> Clustering:
    """Clustering from segment starts over the distinct sorted values."""
    centroids = data.means(starts)
    seg = np.searchsorted(starts, np.arange(data.x.size), side="right") - 1
    ends = np.append(starts[1:], data.x.size) - 1
    sse = float(data.cost(starts, ends).sum())
    return Clustering(centroids, seg[data.inverse], sse, iterations)


def lloyd_1d(values: np.ndarray, centroids: np.ndarray, max_iter: int = 100) -> Clustering:
    """Lloyd's algorithm from `centroids`; in 1-D each cluster is a run of sorted values, so an
    iteration costs O(k log n). Empty clusters are dropped."""
    data = _Sorted(values)
    c = np.unique(np.asarray(centroids, dtype=np.float64))
    starts = np.zeros(1, dtype=np.int64)
    it = 0
    for it in range(1, max_iter + 1):
        bounds = (c[1:] + c[:-1]) / 2
        new = np.unique(np.concatenate([[0], np.searchsorted(data.x, bounds, side="right")]))
        new = new[new < data.x.size]
        if it > 1 and np.array_equal(new, starts):
            break
        starts = new
        c = data.means(starts)
    return _finish(data, starts, it)


def optimal_1d(values: np.ndarray, k: int) -> Clustering:
    """The exact minimum-SSE partition of `values` into at most `k` clusters (dynamic programme)."""
    data = _Sorted(values)
    n = data.x.size
    if k >= n:
        return _finish(data, np.arange(n))
    idx = np.arange(n)
    prev = data.cost(np.zeros(n, dtype=np.int64), idx)  # D[1][i]
    argmins = []
    for m in range(2, k + 1):
        cur = np.full(n, np.inf)
        arg = np.zeros(n, dtype=np.int64)
        cur[: m - 1] = prev[: m - 1]  # fewer points than clusters: nothing to split
        arg[: m - 1] = -1
        lo, hi = np.array([m - 1]), np.array([n - 1])
        olo, ohi = np.array([m - 1]), np.array([n - 1])
        while lo.size:
            mid = (lo + hi) // 2
            top = np.minimum(mid, ohi)
            length = top - olo + 1
            seg = np.repeat(np.arange(mid.size), length)
            offsets = np.concatenate([[0], np.cumsum(length)[:-1]])
            j = olo[seg] + (np.arange(seg.size) - offsets[seg])
            i = mid[seg]
            vals = prev[j - 1] + data.cost(j, i)
            best = np.minimum.reduceat(vals, offsets)
            hits = np.flatnonzero(vals <= best[seg])
            first = hits[np.searchsorted(seg[hits], np.arange(mid.size))]
            bj = j[first]
            cur[mid], arg[mid] = best, bj
            left, right = lo <= mid - 1, mid + 1 <= hi
            lo, hi, olo, ohi = (np.concatenate([lo[left], mid[right] + 1]),
                                np.concatenate([mid[left] - 1, hi[right]]),
                                np.concatenate([olo[left], bj[right]]),
                                np.concatenate([bj[left], ohi[right]]))
        argmins.append(arg)
        prev = cur
    starts = []
    i = n - 1
    for arg in reversed(argmins):
        j = int(arg[i])
        if j < 0:  # fewer values than clusters in this prefix: the next row covers it
            continue
        starts.append(j)
        i = j - 1
    return _finish(data, np.array(sorted({0, *starts}), dtype=np.int64))


def cluster_1d(values: np.ndarray, k: int, init: str = "linear", solver: str = "lloyd",
               max_iter: int = 100, seed: int = 0) -> Clustering:
    """Cluster scalar `values` into at most `k` groups.

    `solver="lloyd"` starts from `init_centroids(values, k, init)`; `solver="optimal"` ignores
    `init` and returns the exact minimum-SSE clustering.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"number of clusters must be a positive int, got {k!r}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot cluster an empty array")
    if not np.isfinite(x).all():
        raise ValueError("cannot cluster non-finite values (NaN or inf in the weights)")
    if solver == "optimal":
        return optimal_1d(x, k)
    if solver != "lloyd":
        raise ValueError(f"unknown k-means solver {solver!r} (choose from {', '.join(SOLVERS)})")
    return lloyd_1d(x, init_centroids(x, k, init, seed), max_iter)
