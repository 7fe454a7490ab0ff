"""Compact N:M position index: one pattern number per group of M, packed in mixed radix.

An N:M-sparse tensor (2:4, 1:4, 2:8, 4:8, ...) keeps exactly `n` nonzeros in every group of `m`
consecutive elements (row-major, so groups lie inside a row whenever the row length divides by
`m`). A group then has only C(m, n) possible patterns (6 for 2:4), so its positions need
log2(C(m, n)) bits (2.58 for 2:4) instead of `m` bits of a bitmask. Each group's pattern is
ranked in the combinatorial number system (``rank = sum_i C(c_i, i + 1)`` over its sorted kept
offsets ``c_0 < c_1 < ...``), `k` ranks are joined into one base-C(m, n) number below 2**63 and
that number is written in `word_bits(n, m)` bits; `k` is chosen to waste the fewest bits (2:4:
17 groups in 44 bits, 2.588 bits per group). The `sparse` codec uses this as its ``"nm"`` index.

>>> keep = np.array([1, 0, 1, 0, 0, 1, 1, 0], dtype=bool)
>>> nm_structure(keep)
(2, 4)
>>> stream = encode_nm(keep, 2, 4)
>>> decode_nm(stream, 2, 4, keep.size).tolist() == np.flatnonzero(keep).tolist()
True
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from slimkit.core.errors import SlimFormatError

MAX_M = 64
LIMIT = 1 << 63  # a packed word stays below this, so uint64 arithmetic never overflows


def valid_nm(n: object, m: object) -> bool:
    """True for ints with 1 <= n < m <= MAX_M."""
    return type(n) is int and type(m) is int and 1 <= n < m <= MAX_M


@lru_cache(maxsize=256)
def packing(n: int, m: int) -> tuple[int, int, int]:
    """(patterns C(m, n), groups per word k, bits per word) with the fewest bits per group.

    >>> packing(2, 4)
    (6, 17, 44)
    """
    patterns = math.comb(m, n)
    best = (patterns, 1, max(1, (patterns - 1).bit_length()))
    k, power = 1, patterns
    while power * patterns < LIMIT:
        k, power = k + 1, power * patterns
        bits = (power - 1).bit_length()
        if bits * best[1] < best[2] * k:
            best = (patterns, k, bits)
    return best


def bits_per_group(n: int, m: int) -> float:
    """Index bits one group of `m` costs (before the last word's padding)."""
    _, k, bits = packing(n, m)
    return bits / k


def nm_structure(nonzero: np.ndarray, max_m: int = MAX_M) -> tuple[int, int] | None:
    """The cheapest (n, m) for which every group of `m` consecutive entries of the flat boolean
    array has exactly `n` set; None if there is none (or the array is empty)."""
    flat = np.asarray(nonzero, dtype=bool).reshape(-1)
    size, nnz = flat.size, int(np.count_nonzero(flat))
    best: tuple[float, int, int] | None = None
    for m in range(2, min(max_m, size) + 1):
        if size % m or (nnz * m) % size:
            continue
        n = nnz * m // size
        if not 1 <= n < m:
            continue
        cost = bits_per_group(n, m) / m
        if best is not None and cost >= best[0]:
            continue
        head = flat[: m * 4096]                                  # most candidates fail early: check a prefix first
        if np.all(head.reshape(-1, m).sum(axis=1) == n) and np.all(flat.reshape(-1, m).sum(axis=1) == n):
            best = (cost, n, m)
    return None if best is None else (best[1], best[2])


def _comb_table(n: int, m: int) -> np.ndarray:
    """table[c, i] = C(c, i) for c < m, i <= n (int64; C(64, 32) < 2**63)."""
    return np.array([[math.comb(c, i) for i in range(n + 1)] for c in range(m)], dtype=np.int64)


def encode_nm(nonzero: np.ndarray, n: int, m: int) -> np.ndarray:
    """The packed pattern stream (uint8) of a flat boolean array that is exactly n:m structured."""
    return pack_ranks(pattern_ranks(nonzero, n, m), n, m)


def pack_ranks(ranks: np.ndarray, n: int, m: int) -> np.ndarray:
    """Pattern numbers (from `pattern_ranks`) -> the packed stream `decode_nm` reads."""
    return _pack_digits(np.asarray(ranks, dtype=np.uint64), *packing(n, m))


def decode_nm(stream: np.ndarray, n: int, m: int, size: int) -> np.ndarray:
    """Flat positions (int64, increasing) of the nonzeros; SlimFormatError on any inconsistency."""
    if not valid_nm(n, m) or not isinstance(size, int) or size < 0 or size % m:
        raise SlimFormatError(f"sparse: nm index {n!r}:{m!r} impossible for a tensor of {size} elements")
    return ranks_to_positions(_unpack_digits(stream, size // m, *packing(n, m)), n, m)


def pattern_ranks(nonzero: np.ndarray, n: int, m: int) -> np.ndarray:
    """Each group's pattern number in [0, C(m, n)) (uint64) for a flat, exactly n:m boolean array."""
    flat = np.asarray(nonzero, dtype=bool).reshape(-1)
    if not valid_nm(n, m) or flat.size % m:
        raise ValueError(f"cannot code {flat.size} entries as {n}:{m} groups")
    groups = flat.reshape(-1, m)
    if groups.size and not np.all(groups.sum(axis=1) == n):
        raise ValueError(f"not every group of {m} has exactly {n} nonzeros")
    offsets = np.nonzero(groups)[1].reshape(-1, n)           # sorted kept offsets per group
    return _comb_table(n, m)[offsets, np.arange(1, n + 1)].sum(axis=1).astype(np.uint64)


def ranks_to_positions(ranks: np.ndarray, n: int, m: int) -> np.ndarray:
    """Inverse of `pattern_ranks`: flat positions (int64, increasing); ranks must be < C(m, n)."""
    ranks = np.asarray(ranks).reshape(-1)
    if ranks.size and int(ranks.max()) >= math.comb(m, n):
        raise SlimFormatError(f"sparse: nm pattern {int(ranks.max())} exceeds C({m}, {n}) - 1")
    table = _comb_table(n, m)
    offsets = np.empty((ranks.size, n), dtype=np.int64)
    rest = ranks.astype(np.int64)
    for i in range(n, 0, -1):                                # greedy combinadic unranking
        c = np.searchsorted(table[:, i], rest, side="right") - 1
        offsets[:, i - 1] = c
        rest = rest - table[c, i]
    base = np.arange(ranks.size, dtype=np.int64)[:, None] * m
    return (offsets + base).reshape(-1)


def _pack_digits(digits: np.ndarray, base: int, k: int, bits: int) -> np.ndarray:
    """Digits < base, `k` per word (least significant first), each word in `bits` bits, LSB first."""
    words_n = -(-digits.size // k)
    padded = np.zeros(words_n * k, dtype=np.uint64)
    padded[: digits.size] = digits
    cols = padded.reshape(words_n, k)
    words = np.zeros(words_n, dtype=np.uint64)
    for j in range(k - 1, -1, -1):                          # Horner: word = sum d_j * base**j
        words = words * np.uint64(base) + cols[:, j]
    as_bits = np.empty((words_n, bits), dtype=np.uint8)
    for j in range(bits):
        as_bits[:, j] = (words >> np.uint64(j)) & np.uint64(1)
    return np.packbits(as_bits.reshape(-1), bitorder="little")


def _unpack_digits(stream: np.ndarray, count: int, base: int, k: int, bits: int) -> np.ndarray:
    words_n = -(-count // k)
    if stream.dtype != np.uint8 or stream.ndim != 1 or stream.size != (words_n * bits + 7) // 8:
        raise SlimFormatError(f"sparse: nm index of {stream.size} bytes cannot hold {count} groups")
    as_bits = np.unpackbits(stream, bitorder="little", count=words_n * bits).reshape(words_n, bits)
    words = np.zeros(words_n, dtype=np.uint64)
    for j in range(bits):                                    # ~8 bytes of work memory per stored byte
        words |= as_bits[:, j].astype(np.uint64) << np.uint64(j)
    digits = np.empty((words_n, k), dtype=np.uint64)
    for j in range(k):
        digits[:, j] = words % np.uint64(base)
        words = words // np.uint64(base)
    if np.any(words):
        raise SlimFormatError(f"sparse: nm index word exceeds {base}**{k}")
    flat = digits.reshape(-1)
    if np.any(flat[count:]):
        raise SlimFormatError("sparse: nm index has nonzero padding after the last group")
    return flat[:count]
