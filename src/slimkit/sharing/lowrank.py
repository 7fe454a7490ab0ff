"""Low-rank factorization math: W (out, in) ~ B (out, r) @ A (r, in).

Plain SVD minimises ||W - BA||_F. The activation-aware variant minimises the error on the
layer's real inputs, E||(W - BA) x||^2 = ||(W - BA) C^{1/2}||_F^2 with C = E[x x^T] from
calibration data: factor W C^{1/2} by SVD and map back with C^{-1/2} (the closed-form optimum;
with C = I it is plain SVD). Projecting onto the principal components of the inputs is the
special case where W is ignored when choosing the subspace; this one is never worse.

>>> a, b = svd_factors(weight, rank=16)
>>> a, b = whitened_factors(weight, input_second_moment, rank=16)
"""

from __future__ import annotations

import math

import torch

from slimkit.core.torch_utils import num_threads


def _lapack_threads():
    """Run decompositions single-threaded: on a busy machine torch's threaded LAPACK can take
    orders of magnitude longer on these small matrices (docs/notes/linear-algebra-choices.md)."""
    return num_threads(1)


def _sqrt_and_inverse(cov: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    cov = cov.double()
    eps = damp * float(cov.diagonal().mean().clamp_min(1e-12))
    with _lapack_threads():
        vals, vecs = torch.linalg.eigh(cov + eps * torch.eye(cov.shape[0], dtype=cov.dtype))
    vals = vals.clamp_min(eps)
    root = (vecs * vals.sqrt()) @ vecs.T
    inv_root = (vecs / vals.sqrt()) @ vecs.T
    return root, inv_root


def spectrum(weight: torch.Tensor, cov: torch.Tensor | None = None, damp: float = 1e-4) -> torch.Tensor:
    """Singular values that the factorization truncates (of W, or of W C^{1/2} when `cov`)."""
    w = weight.detach().double()
    if cov is not None:
        w = w @ _sqrt_and_inverse(cov, damp)[0]
    with _lapack_threads():
        return torch.linalg.svdvals(w)


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A (rank, in) and B (out, rank), B @ A the best rank-`rank` approximation of W."""
    with _lapack_threads():
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).float(), (u[:, :rank] * root).float()


def whitened_factors(weight: torch.Tensor, cov: torch.Tensor, rank: int,
                     damp: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) minimising E||(W - BA) x||^2 for inputs with second moment `cov` = E[x x^T]."""
    root, inv_root = _sqrt_and_inverse(cov, damp)
    with _lapack_threads():
        u, s, vh = torch.linalg.svd(weight.detach().double() @ root, full_matrices=False)
    sq = s[:rank].sqrt()
    return (sq[:, None] * vh[:rank] @ inv_root).float(), (u[:, :rank] * sq).float()


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank keeping at least `energy` of the squared singular values."""
    e = singular_values.double() ** 2
    kept = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
    return int(torch.searchsorted(kept, torch.tensor([energy - 1e-12], dtype=kept.dtype))[0]) + 1


def rank_for_budget(in_features: int, out_features: int, fraction: float) -> int:
    """Largest rank whose two factors hold at most `fraction` of the dense layer's weights."""
    return max(1, math.floor(fraction * in_features * out_features / (in_features + out_features)))
