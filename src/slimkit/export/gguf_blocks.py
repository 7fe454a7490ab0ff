"""GGML blocks from slimkit's integer codes: the pure math behind `slimkit.export.gguf` (numpy only,
no modules).

GGML quantizes each row of a weight in blocks of 32 consecutive values (along the input dimension,
as slimkit's groups are) and stores per block:

- Q8_0: `d` (float16) and 32 int8 `q`:                         `w = d * q`
- Q4_0: `d` (float16) and 32 4-bit `q` (two per byte):         `w = d * (q - 8)`
- Q4_1: `d`, `m` (float16) and 32 4-bit `q`:                   `w = d * q + m`

slimkit stores `w = scale * (code - zero)` per group (zero = 2**(bits-1) when symmetric), so codes
whose groups are whole numbers of blocks (group size a multiple of 32, or one group per row or per
tensor) map onto these blocks without touching a code (`map_codes`):

| slimkit codes                              | GGML  | exact?                                        |
|--------------------------------------------|-------|-----------------------------------------------|
| symmetric, 2-4 bits                        | Q4_0  | yes (q = code - 2**(bits-1) + 8, d = scale)   |
| symmetric, 5-8 bits; int8 rows (Int8Linear) | Q8_0  | yes (q = code - 2**(bits-1), d = scale)       |
| asymmetric, 1-4 bits                       | Q4_1  | codes yes; m = -scale * zero rounded to fp16  |
| asymmetric, 5-7 bits; 8 bits if every      | Q8_0  | yes (q = code - zero, d = scale)              |
|   code - zero fits int8                    |       |                                               |

"Exact" assumes the scale is a float16 number (slimkit's default `scale_dtype`); a float32 scale
is rounded to float16 (relative error <= 2**-11) and `BlockMap.exact` says False. Anything else (groups of
fewer than 32, rows whose length is not a multiple of 32) returns None: the caller re-quantizes
the decoded weight with `requantize` and reports the error.

>>> codes = np.random.randint(1, 16, (4, 64)).astype(np.uint8)
>>> scale = np.full((4, 2), 0.01, np.float16)
>>> m = map_codes(codes, scale, None, bits=4, group_size=32)
>>> m.qtype.name, m.blocks.shape
('Q4_0', (4, 36))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32


def qtypes():
    """The `gguf.GGMLQuantizationType` enum (the `gguf` package loads on first use)."""
    import gguf

    return gguf.GGMLQuantizationType


@dataclass
class BlockMap:
    """Raw GGML bytes for a (rows, cols) weight: `blocks` uint8 (rows, cols // 32 * type size)."""

    qtype: object          # gguf.GGMLQuantizationType
    blocks: np.ndarray
    exact: bool            # every value decodes to slimkit's own decoded value, bit for bit


def block_scales(scale: np.ndarray, rows: int, cols: int, group_size: int) -> np.ndarray | None:
    """Per-block values (rows, cols // 32) of per-group values `scale` ((rows, groups) or (1, 1) per
    tensor), or None where a group is not a whole number of 32-blocks."""
    scale = np.asarray(scale)
    if cols % BLOCK or group_size % BLOCK or (rows * cols) % group_size:
        return None
    if scale.shape == (1, 1) and group_size == rows * cols:   # one scale for the whole tensor
        return np.broadcast_to(scale, (rows, cols // BLOCK))
    if scale.shape != (rows, cols // group_size):
        return None
    return np.repeat(scale, group_size // BLOCK, axis=1)


def _f16(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """`values` as float16 and whether that is exact (finite and equal to the input)."""
    with np.errstate(over="ignore"):
        half = np.asarray(values, np.float32).astype(np.float16)
    same = bool(np.all(np.isfinite(half)) and np.array_equal(half.astype(np.float32), np.asarray(values, np.float32)))
    return half, same


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values in 0..15 -> (n, 16) bytes: value j in the low nibble of byte j, value j+16 in
    its high nibble (GGML's Q4 layout)."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def q8_0_blocks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q8_0 bytes of int values `q` (rows, cols) in -128..127 with float16 block scales `d` (rows, cols // 32)."""
    rows, cols = q.shape
    n = rows * cols // BLOCK
    body = q.astype(np.int8).reshape(n, BLOCK).view(np.uint8)
    head = np.ascontiguousarray(d, np.float16).reshape(n, 1).view(np.uint8)
    return np.concatenate([head, body], axis=1).reshape(rows, -1)


def q4_0_blocks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q4_0 bytes of values `q` (rows, cols) in 0..15 (meaning q - 8) with float16 block scales `d`."""
    rows, cols = q.shape
    n = rows * cols // BLOCK
    head = np.ascontiguousarray(d, np.float16).reshape(n, 1).view(np.uint8)
    return np.concatenate([head, _pack_nibbles(q.reshape(n, BLOCK))], axis=1).reshape(rows, -1)


def q4_1_blocks(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Q4_1 bytes of values `q` (rows, cols) in 0..15 with float16 block scales `d` and minimums `m`."""
    rows, cols = q.shape
    n = rows * cols // BLOCK
    head = np.concatenate([np.ascontiguousarray(d, np.float16).reshape(n, 1).view(np.uint8),
                           np.ascontiguousarray(m, np.float16).reshape(n, 1).view(np.uint8)], axis=1)
    return np.concatenate([head, _pack_nibbles(q.reshape(n, BLOCK))], axis=1).reshape(rows, -1)


def map_codes(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int,
              group_size: int) -> BlockMap | None:
    """GGML blocks holding slimkit codes `codes` (rows, cols; uint8 in 0..2**bits-1, or int8 for an
    int8 row code with `zero` None and bits 8 meaning q = code) unchanged, or None where no block type
    holds them (see the module's table).

    `scale` / `zero` are per group ((rows, groups), or (1, 1) for one per tensor)."""
    rows, cols = codes.shape
    d = block_scales(scale, rows, cols, group_size)
    if d is None:
        return None
    half, exact = _f16(d)
    t = qtypes()
    signed = codes.dtype == np.int8
    if zero is None:
        q = codes.astype(np.int16) - (0 if signed else 2 ** (bits - 1))
        if bits <= 4 and not signed:
            return BlockMap(t.Q4_0, q4_0_blocks(q + 8, half), exact)
        return BlockMap(t.Q8_0, q8_0_blocks(q, half), exact)
    z = block_scales(zero, rows, cols, group_size)
    if bits <= 4:
        # w = scale * (code - zero) = d * code + m, m = -scale * zero: the only rounding is m's
        m64 = -np.asarray(d, np.float64) * np.asarray(z, np.float64)
        m_half, m_exact = _f16(m64.astype(np.float32))
        m_exact = m_exact and np.array_equal(m_half.astype(np.float64), m64)
        return BlockMap(t.Q4_1, q4_1_blocks(codes, half, m_half), exact and m_exact)
    q = codes.astype(np.int16) - np.repeat(np.asarray(z, np.int16), BLOCK, axis=1)
    if q.min(initial=0) < -128 or q.max(initial=0) > 127:
        return None
    return BlockMap(t.Q8_0, q8_0_blocks(q, half), exact)


def requantize(weight: np.ndarray, qtype) -> np.ndarray:
    """GGML data of a float weight (rows, cols) in `qtype` (F32 / F16: plain arrays; Q8_0 / Q4_0 /
    Q4_1: the reference round-to-nearest of `gguf.quants`, bit-exact with ggml's own)."""
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(weight, np.float32), qtype)


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """Float32 values of GGML data (the inverse of `requantize` / `map_codes`, as llama.cpp decodes)."""
    import gguf

    return gguf.quants.dequantize(np.asarray(data), qtype).astype(np.float32, copy=False)
