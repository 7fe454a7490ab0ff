"""1-D k-means math: initialisations, Lloyd's, the exact dynamic programme."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from slimkit.sharing.kmeans import cluster_1d, init_centroids, optimal_1d


def _brute_force_sse(x: np.ndarray, k: int) -> float:
    u = np.unique(x)
    best = np.inf
    for kk in range(1, min(k, u.size) + 1):
        for cuts in itertools.combinations(range(1, u.size), kk - 1):
            bounds = [0, *cuts, u.size]
            sse = 0.0
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                seg = x[(x >= u[a]) & (x <= u[b - 1])]
                sse += float(((seg - seg.mean()) ** 2).sum())
            best = min(best, sse)
    return best


def test_optimal_matches_brute_force_on_small_inputs():
    rng = np.random.default_rng(0)
    for _ in range(150):
        x = np.round(rng.normal(size=int(rng.integers(1, 9))), 1)  # with ties
        k = int(rng.integers(1, 5))
        fit = optimal_1d(x, k)
        assert fit.sse == pytest.approx(_brute_force_sse(x, k), abs=1e-9)
        assert float(((x - fit.centroids[fit.labels]) ** 2).sum()) == pytest.approx(fit.sse, abs=1e-9)


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_optimal_never_worse_than_lloyd(init):
    w = np.random.default_rng(1).standard_t(4, size=5000)
    for k in (4, 16, 32):
        lloyd = cluster_1d(w, k, init=init, solver="lloyd")
        best = cluster_1d(w, k, solver="optimal")
        assert best.sse <= lloyd.sse + 1e-9
        assert best.centroids.size == k and np.all(np.diff(best.centroids) > 0)
        assert lloyd.labels.shape == w.shape and lloyd.labels.max() < k


def test_labels_point_to_nearest_centroid_after_lloyd():
    w = np.random.default_rng(2).normal(size=3000)
    fit = cluster_1d(w, 8, init="density", max_iter=500)
    dist = np.abs(w[:, None] - fit.centroids[None, :])
    assert np.array_equal(dist.argmin(1), fit.labels)


def test_fewer_distinct_values_than_clusters():
    x = np.array([1.0, 1.0, 2.0, 5.0])
    for solver in ("lloyd", "optimal"):
        fit = cluster_1d(x, 8, solver=solver)
        assert fit.sse == pytest.approx(0.0)
        assert np.array_equal(fit.centroids[fit.labels], x)


def test_inits_are_sorted_and_inside_the_range():
    w = np.random.default_rng(3).normal(size=1000)
    for init in ("linear", "density", "kmeans++"):
        c = init_centroids(w, 16, init)
        assert np.all(np.diff(c) >= 0) and c.min() >= w.min() and c.max() <= w.max()
    assert init_centroids(w, 16, "linear")[0] == w.min()


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="empty"):
        cluster_1d(np.zeros(0), 4)
    with pytest.raises(ValueError, match="non-finite"):
        cluster_1d(np.array([1.0, np.nan]), 4)
    with pytest.raises(ValueError, match="solver"):
        cluster_1d(np.ones(3), 2, solver="magic")
    with pytest.raises(ValueError, match="init"):
        cluster_1d(np.ones(3), 2, init="magic")
