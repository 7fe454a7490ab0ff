"""The hash functions of HashedNets (Chen et al. 2015, arXiv 1504.04788).

Virtual weight (i, j) of a layer reads real parameter `index[i, j]` in [0, buckets) with sign
`sign[i, j]` in {-1, +1}. Both come from splitmix64 of the flat position and the layer's seed,
computed with numpy uint64 arithmetic, so they are identical on every platform and need not be
stored: a .slim file keeps only the real parameters and the seed.

>>> index, sign = hash_indices(300, 64, buckets=2400, seed=7)
>>> index.shape, int(index.max()) < 2400, set(np.unique(sign)) <= {-1.0, 1.0}
((300, 64), True, True)
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
MAX_SEED = 2**32 - 1
CHUNK = 1 << 20  # positions hashed per slice


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_indices(rows: int, cols: int, buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(index int64 (rows, cols) in [0, buckets), sign float32 (rows, cols) in {-1, 1}).

    Computed in slices of at most `CHUNK` positions, so the peak memory is the two results plus
    a few MB of uint64 temporaries."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"hash seed must be in 0..{MAX_SEED}, got {seed}")
    total = rows * cols
    index = np.empty(total, dtype=np.int64)
    sign = np.empty(total, dtype=np.float32)
    key = np.uint64(seed) << np.uint64(32)
    for start in range(0, total, CHUNK):
        flat = np.arange(start, min(start + CHUNK, total), dtype=np.uint64) ^ key
        mixed = splitmix64(flat)
        index[start:start + len(flat)] = mixed % np.uint64(buckets)
        bits = splitmix64(mixed ^ np.uint64(0x5851F42D4C957F2D)) >> np.uint64(63)
        sign[start:start + len(flat)] = 1.0 - 2.0 * bits.astype(np.float32)
    return index.reshape(rows, cols), sign.reshape(rows, cols)


def project(weight: np.ndarray, index: np.ndarray, sign: np.ndarray, buckets: int) -> np.ndarray:
    """Least-squares real parameters for a dense `weight`: the mean of sign * w in each bucket."""
    total = np.bincount(index.reshape(-1), (sign * weight).reshape(-1), minlength=buckets)
    count = np.bincount(index.reshape(-1), minlength=buckets)
    return (total / np.maximum(count, 1)).astype(np.float32)
