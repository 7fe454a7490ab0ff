"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774) and Wanda (Sun et al., arXiv 2306.11695) as pure
tensor math: no modules, no hooks.

- Wanda scores each weight by |W_ij| * ||X_j||_2 (its magnitude times the L2 norm of its input channel
  over the calibration tokens) and prunes the lowest scores of each output row (unstructured), or of
  each group of `m` consecutive inputs of a row (N:M); the kept weights are not changed.
- SparseGPT visits the columns of W in blocks and, inside a block, one at a time (as GPTQ does):
  the weights to prune are chosen by the OBS saliency w^2 / [H^-1]_jj^2 (per block for unstructured
  sparsity, per group of `m` for N:M), set to zero, and the error is spread over the columns not yet
  visited through the inverse Hessian H = 2/n X^T X, so that ||X W^T - X W'^T|| stays small.

Both return an exact pattern: unstructured, exactly round(sparsity * row length) zeros per row
(Wanda) or round(sparsity * block size) per block of columns (SparseGPT); N:M, exactly `m - n`
zeros in every group of `m`.

>>> keep = wanda_mask(weight, norms, sparsity=0.5)             # norms: (cols,) input L2 norms
>>> pruned, keep = sparsegpt_prune(weight, hessian, n=2, m=4)  # 2:4
"""

from __future__ import annotations

import torch

from slimkit.core.errors import ConfigError
from slimkit.core.torch_utils import num_threads
from slimkit.dist.calibration import inverse_cholesky


def check_pattern(cols: int, sparsity: float, n: int | None, m: int) -> None:
    """ConfigError unless the pattern fits a layer with `cols` inputs."""
    if n is None:
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity must lie in [0, 1), got {sparsity}")
        return
    if not 1 <= n < m:
        raise ConfigError(f"N:M sparsity needs 1 <= n < m, got {n}:{m}")
    if cols % m:
        raise ConfigError(f"N:M sparsity needs the input size ({cols}) to be a multiple of {m}")


def keep_top_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping all but the round(sparsity * cols) lowest scores of each row (ties by position)."""
    rows, cols = scores.shape
    prune = round(sparsity * cols)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=scores.device)
    if prune > 0:
        order = torch.argsort(scores, dim=1, stable=True)[:, :prune]
        keep.scatter_(1, order, False)
    return keep


def keep_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the `n` highest scores of every `m` consecutive ones in a row."""
    rows, cols = scores.shape
    groups = scores.reshape(-1, m)
    top = groups.topk(n, dim=1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True).reshape(rows, cols)


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 for `weight` (rows, cols) and input-channel norms (cols,)."""
    return weight.detach().abs().float() * norms.to(weight.device).float()[None, :]


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float = 0.5, n: int | None = None,
               m: int = 4) -> torch.Tensor:
    """Wanda's keep-mask of `weight` (rows, cols): per row (`sparsity`), or N:M when `n` is given.

    >>> wanda_mask(torch.tensor([[1.0, -2.0, 3.0, 0.5]]), torch.tensor([4.0, 1.0, 1.0, 1.0]), 0.5).tolist()
    [[True, False, True, False]]
    """
    check_pattern(weight.shape[1], sparsity, n, m)
    scores = wanda_scores(weight, norms)
    return keep_top_per_row(scores, sparsity) if n is None else keep_nm(scores, n, m)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5, n: int | None = None,
                    m: int = 4, block_size: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned and compensated weight, keep-mask) of `weight` (rows, cols) given the Hessian (cols, cols)
    of its inputs: unstructured at `sparsity`, or N:M (`n` kept of every `m`) when `n` is given."""
    rows, cols = weight.shape
    check_pattern(cols, sparsity, n, m)
    if hessian.shape != (cols, cols):
        raise ConfigError(f"hessian must be ({cols}, {cols}) for a weight with {cols} inputs, "
                          f"got {tuple(hessian.shape)}")
    if n is not None:
        block_size = max(m, block_size - block_size % m)   # N:M groups never straddle two blocks
    w = weight.detach().float().clone()
    h = hessian.detach().to(device=w.device, dtype=torch.float32, copy=True)
    dead = torch.diag(h) == 0          # inputs calibration never saw: kept or pruned by magnitude, no error spread
    h[dead, dead] = 1.0
    hinv = inverse_cholesky(h, damp)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    with num_threads(1):  # thousands of tiny ops: a thread pool only adds latency
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            w1 = w[:, i1:i2].clone()
            err1 = torch.zeros_like(w1)
            hinv1 = hinv[i1:i2, i1:i2]
            diag = torch.diag(hinv1)
            keep1 = keep[:, i1:i2]
            if n is None:
                keep1.copy_(_keep_lowest_out(w1.square() / diag.square()[None, :], sparsity))
            for i in range(i2 - i1):
                if n is not None and i % m == 0:
                    keep1[:, i:i + m] = keep_nm(w1[:, i:i + m].square() / diag[i:i + m].square()[None, :], n, m)
                col = w1[:, i]
                q = torch.where(keep1[:, i], col, torch.zeros_like(col))
                err = (col - q) / hinv1[i, i]
                w1[:, i:].addr_(err, hinv1[i, i:], alpha=-1.0)
                w1[:, i] = q
                err1[:, i] = err
            w[:, i1:i2] = w1
            w[:, i2:].addmm_(err1, hinv[i1:i2, i2:], alpha=-1.0)
    return w.to(weight.dtype), keep


def _keep_lowest_out(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask dropping exactly round(sparsity * numel) of the lowest `scores` of a block."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
    prune = round(sparsity * flat.numel())
    if prune > 0:
        keep[torch.argsort(flat, stable=True)[:prune]] = False
    return keep.reshape(scores.shape)
