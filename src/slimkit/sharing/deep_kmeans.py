"""Deep k-Means (Wu et al. 2018, arXiv 1806.09228): vector weight sharing for convolutions and the
spectrally relaxed k-means regulariser used while re-training. Pure tensor math; no module walking.

A conv weight (out, in, kh, kw) is cut into N sub-vectors of length d — one per kernel row
(`"row"`, d = kw, the paper's row-stationary layout) or one per kernel (`"kernel"`, d = kh*kw) —
stacked as X (N x d); a Linear weight into runs of `linear_dim` inputs. k-means on those rows
minimises  Tr(X^T X) - Tr(F^T X X^T F)  over normalised cluster indicators F (N x K) (Zha et
al. 2001); relaxing F to any orthonormal matrix gives the regulariser

    R(X) = 1/2 (Tr(X^T X) - Tr(F^T X X^T F)),   F = top-K left singular vectors of X,

with F held fixed while X takes a gradient step (the paper alternates the two). R is the energy
of X outside its top-K singular directions, so it is zero whenever K >= d: only K < d clusters
give it something to do (checked by the config).

>>> x = torch.randn(512, 9)
>>> spectral_penalty(x, 4) > 0, float(spectral_penalty(x, 9)) < 1e-4
(tensor(True), True)
>>> fit = vector_kmeans(x.numpy(), 8, seed=0)
>>> fit.centroids.shape, fit.labels.shape
((8, 9), (512,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

VECTORS = ("row", "kernel")


def sub_vectors(weight: torch.Tensor, vector: str = "kernel", linear_dim: int = 4) -> torch.Tensor:
    """The (N, d) view of a weight: for a conv, one row per kernel row or per kernel; for a
    Linear (2-D weight), runs of `linear_dim` consecutive input weights (product quantization)."""
    if weight.ndim == 2:
        if weight.shape[1] % linear_dim:
            raise ValueError(f"linear_dim {linear_dim} does not divide the input size {weight.shape[1]}")
        return weight.reshape(-1, linear_dim)
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv or 2-D linear weight, got shape {tuple(weight.shape)}")
    if vector not in VECTORS:
        raise ValueError(f"vector must be one of {', '.join(VECTORS)}, got {vector!r}")
    d = weight.shape[3] if vector == "row" else weight.shape[2] * weight.shape[3]
    return weight.reshape(-1, d)


def top_singular_basis(x: torch.Tensor, k: int) -> torch.Tensor:
    """F: the top-k left singular vectors of `x` (N x k), computed without gradient."""
    with torch.no_grad():
        u, _, _ = torch.linalg.svd(x.double(), full_matrices=False)
    return u[:, :k].to(x.dtype)


def spectral_penalty(x: torch.Tensor, k: int, basis: torch.Tensor | None = None) -> torch.Tensor:
    """1/2 (||X||^2 - ||F^T X||^2) with F fixed (the top-k basis of X unless given)."""
    f = top_singular_basis(x, k) if basis is None else basis
    return 0.5 * ((x * x).sum() - (f.T @ x).pow(2).sum())


@dataclass(frozen=True)
class VectorClustering:
    centroids: np.ndarray   # (K, d)
    labels: np.ndarray      # (N,)
    sse: float


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [x[rng.integers(len(x))]]
    dist = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = dist.sum()
        idx = int(rng.integers(len(x))) if total <= 0 else int(rng.choice(len(x), p=dist / total))
        centers.append(x[idx])
        dist = np.minimum(dist, ((x - x[idx]) ** 2).sum(1))
    return np.stack(centers)


def vector_kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 100) -> VectorClustering:
    """Lloyd's k-means on the rows of `x` with k-means++ seeding (float64); k <= len(x)."""
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot make {k} clusters of {len(x)} vectors")
    rng = np.random.default_rng(seed)
    centers = _plus_plus(x, k, rng)
    labels = np.zeros(len(x), dtype=np.int64)
    for it in range(max_iter):
        d2 = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None]
        new = d2.argmin(1)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels == c]
            if len(members):
                centers[c] = members.mean(0)
            else:  # an empty cluster takes the point worst served so far
                far = int(d2[np.arange(len(x)), labels].argmax())
                centers[c], labels[far] = x[far], c
    sse = float(((x - centers[labels]) ** 2).sum())
    return VectorClustering(centers, labels, sse)
