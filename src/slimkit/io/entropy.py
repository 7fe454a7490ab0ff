"""Canonical Huffman coding of uint8 symbol streams (cluster indices, sparse index gaps).

>>> stream = encode_symbols(np.array([3, 3, 3, 1, 0, 3], np.uint8))
>>> decode_symbols(stream, 6).tolist()
[3, 3, 3, 1, 0, 3]

Stream layout (all uint8): byte 0 = m - 1, where m - 1 is the largest symbol used; then m code
lengths as 4-bit nibbles (0 = symbol unused, lengths <= 15); for streams of more than CHUNK
(4096) symbols, the bit offset (uint32, little-endian) at which each later chunk starts, so all
chunks decode side by side with numpy; then the codewords, MSB first, zero-padded to a byte.
An empty input gives an empty stream; a stream with one distinct symbol stores no payload bits.
The symbol count is kept by the caller (the codec's params).
Decoding validates the header (Kraft equality), never reads past the payload and requires the
payload length to match exactly, so corruption raises `SlimFormatError`.
"""

from __future__ import annotations

import heapq

import numpy as np

from slimkit.core.errors import SlimFormatError

MAX_LEN = 15
CHUNK = 4096  # symbols per independently decodable chunk (offsets stored for the rest)
DOUBLING_MAX = 1 << 15  # streams up to this many symbols decode by pointer doubling (docs/notes/runtime-choices.md)


def huffman_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Code length per symbol (0 for unused symbols), at most `max_len` bits.

    Over-long codes (rare, very skewed counts) are avoided by flattening the counts and rebuilding.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    weights = counts[used].astype(np.int64)
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= max_len:
            lengths[used] = depth
            return lengths
        weights = np.maximum(1, weights >> 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    heap = [(int(w), i, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = list(range(len(weights)))
    nxt = len(weights)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        parent.append(nxt)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (w1 + w2, nxt, nxt))
        nxt += 1
    depth = np.zeros(nxt, dtype=np.int64)
    for node in range(nxt - 2, -1, -1):  # parents are created after children
        depth[node] = depth[parent[node]] + 1
    return depth[: len(weights)]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values: symbols sorted by (length, symbol) get consecutive codes."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, 0
    for sym in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev
        prev = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


def encode_symbols(symbols: np.ndarray) -> np.ndarray:
    """Huffman-code a uint8 array into a self-describing uint8 stream (see the module doc)."""
    sym = np.asarray(symbols)
    if sym.dtype != np.uint8:
        raise TypeError(f"encode_symbols expects uint8 symbols, got {sym.dtype}")
    sym = sym.reshape(-1)
    if sym.size == 0:
        return np.zeros(0, dtype=np.uint8)
    m = int(sym.max()) + 1
    lengths = huffman_lengths(np.bincount(sym, minlength=m))
    nibbles = np.zeros(m + (m % 2), dtype=np.uint8)
    nibbles[:m] = lengths
    header = np.concatenate([[m - 1], (nibbles[0::2] << 4) | nibbles[1::2]]).astype(np.uint8)
    if np.count_nonzero(lengths) == 1:
        return header
    codes = canonical_codes(lengths)[sym]
    lens = lengths[sym]
    return np.concatenate([header, _chunk_offsets(lens, sym.size).astype("<u4").view(np.uint8),
                           _pack_codes(codes, lens)])


def _pack_codes(codes: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenate codewords (MSB first) into bytes, vectorized: each codeword lands in at most
    two big-endian 16-bit words, whose contributions never overlap, so they can be summed."""
    ends = np.cumsum(lens)
    total = int(ends[-1])
    start = ends - lens
    word, shift = start >> 4, 32 - (start & 15) - lens
    placed = codes << shift  # inside a 32-bit window over words `word` and `word + 1`
    size = (total + 15) // 16 + 1
    words = (np.bincount(word, placed >> 16, minlength=size)
             + np.bincount(word + 1, placed & 0xFFFF, minlength=size))
    return words.astype(">u2").view(np.uint8)[: (total + 7) // 8].copy()


def _chunk_offsets(lens: np.ndarray, count: int) -> np.ndarray:
    """Bit offset where each chunk of CHUNK symbols after the first starts (for parallel decoding)."""
    if count <= CHUNK:
        return np.zeros(0, dtype=np.uint32)
    starts = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])[CHUNK:count:CHUNK]
    if starts.size and starts[-1] >= 2**32:
        raise ValueError("huffman: stream too long (over 2**32 bits)")
    return starts.astype(np.uint32)


def _read_header(stream: np.ndarray) -> tuple[np.ndarray, int]:
    if stream.size < 2:
        raise SlimFormatError("huffman: stream too short for its header")
    m = int(stream[0]) + 1
    head = 1 + (m + 1) // 2
    if stream.size < head:
        raise SlimFormatError("huffman: stream truncated inside the code-length table")
    pairs = stream[1:head]
    lengths = np.stack([pairs >> 4, pairs & 15], axis=1).reshape(-1)[:m].astype(np.int64)
    used = np.count_nonzero(lengths)
    if used == 0:
        raise SlimFormatError("huffman: code-length table names no symbol")
    if used > 1 and sum(2 ** (MAX_LEN - int(n)) for n in lengths[lengths > 0]) != 2**MAX_LEN:
        raise SlimFormatError("huffman: code lengths do not form a complete prefix code")
    return lengths, head


def _tables(lengths: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Lookup tables on `width`-bit windows: symbol and code length of the codeword at the front."""
    width = int(lengths.max())
    table_sym = np.zeros(2**width, dtype=np.uint8)
    table_len = np.zeros(2**width, dtype=np.int64)
    codes = canonical_codes(lengths)
    for s in np.flatnonzero(lengths):
        span = width - int(lengths[s])
        start = int(codes[s]) << span
        table_sym[start:start + (1 << span)] = s
        table_len[start:start + (1 << span)] = lengths[s]
    return width, table_sym, table_len


def decode_symbols(stream: np.ndarray, count: int) -> np.ndarray:
    """Invert `encode_symbols`; `count` is the number of symbols encoded."""
    stream = np.asarray(stream)
    if stream.dtype != np.uint8 or stream.ndim != 1:
        raise SlimFormatError("huffman: stream must be a 1-D uint8 array")
    if not isinstance(count, int) or count < 0:
        raise SlimFormatError(f"huffman: symbol count {count!r} is not a non-negative int")
    if count == 0:
        if stream.size:
            raise SlimFormatError("huffman: non-empty stream for zero symbols")
        return np.zeros(0, dtype=np.uint8)
    lengths, head = _read_header(stream)
    if np.count_nonzero(lengths) == 1:
        if stream.size != head:
            raise SlimFormatError("huffman: single-symbol stream carries payload bytes")
        return np.full(count, int(np.flatnonzero(lengths)[0]), dtype=np.uint8)
    chunks = -(-count // CHUNK)
    payload = stream[head + 4 * (chunks - 1):]
    if count > 8 * payload.size:
        raise SlimFormatError(f"huffman: {payload.size} payload bytes cannot hold {count} symbols")
    starts = np.concatenate([[0], stream[head:head + 4 * (chunks - 1)].view("<u4")]).astype(np.int64)
    total = 8 * payload.size
    if np.any(np.diff(starts) < CHUNK) or starts[-1] >= total:
        raise SlimFormatError("huffman: chunk offsets are inconsistent with the stream")
    tables = _tables(lengths)
    decode = _decode_by_doubling if count <= DOUBLING_MAX else _decode_by_lanes
    end, out = decode(payload, starts, count, tables)
    ends = np.append(starts[1:], total)
    if np.any(end[:-1] != ends[:-1]) or end[-1] > total:
        raise SlimFormatError("huffman: stream ends inside a symbol or chunk offsets are wrong")
    if (int(end[-1]) + 7) // 8 != payload.size:
        raise SlimFormatError(f"huffman: {payload.size - (int(end[-1]) + 7) // 8} bytes of trailing data")
    return out


def _windows(payload: np.ndarray, width: int) -> np.ndarray:
    """A 24-bit big-endian window at every byte (padded: a lane never runs off the end)."""
    buf = np.concatenate([payload, np.zeros(2 * CHUNK + 3, dtype=np.uint8)]).astype(np.int32)
    return (buf[:-2] << 16) | (buf[1:-1] << 8) | buf[2:]


def _decode_by_doubling(payload: np.ndarray, starts: np.ndarray, count: int,
                        tables: tuple[int, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Decode every bit position at once, then follow each chunk's chain of codeword starts by
    pointer doubling (log2(CHUNK) rounds of gathers): fast for small and medium streams.
    Returns (bit position after each chunk's last symbol, symbols)."""
    width, table_sym, table_len = tables
    total = 8 * payload.size
    words = _windows(payload, width)
    bit = np.arange(total, dtype=np.int64)
    window = (words[bit >> 3] >> (24 - width - (bit & 7))) & ((1 << width) - 1)
    step = table_len[window]
    jump = np.minimum(bit + step, total)
    jump = np.append(jump, total)  # position `total` absorbs: a chain that runs off stays there
    t = np.arange(count, dtype=np.int64) % CHUNK
    pos = np.repeat(starts, np.diff(np.append(np.arange(0, count, CHUNK), count)))
    for b in range(max(1, (CHUNK - 1).bit_length())):
        sel = ((t >> b) & 1).astype(bool)
        pos[sel] = jump[pos[sel]]
        jump = jump[jump]
    if pos.size and pos.max() >= total:
        raise SlimFormatError("huffman: stream ends before the last symbol")
    lasts = np.append(np.arange(CHUNK - 1, count - 1, CHUNK), count - 1)
    end = pos[lasts] + step[pos[lasts]]
    return end, table_sym[window[pos]]


def _decode_by_lanes(payload: np.ndarray, starts: np.ndarray, count: int,
                     tables: tuple[int, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Decode all chunks side by side, one codeword per chunk per step: fast for long streams."""
    width, table_sym, table_len = tables
    words = _windows(payload, width)
    chunks = starts.size
    out = np.empty((chunks, CHUNK), dtype=np.uint8)
    pos = starts.copy()
    last = count - (chunks - 1) * CHUNK
    mask, base = (1 << width) - 1, 24 - width
    for step in range(CHUNK):
        live = pos if step < last else pos[:-1]
        if not live.size:
            break
        window = (words[live >> 3] >> (base - (live & 7))) & mask
        out[: live.size, step] = table_sym[window]
        live += table_len[window]
    return pos, out.reshape(-1)[:count]


def shannon_bits(symbols: np.ndarray) -> float:
    """The empirical entropy bound: count x H(symbols), in bits (order-0 model)."""
    sym = np.asarray(symbols).reshape(-1)
    if sym.size == 0:
        return 0.0
    p = np.bincount(sym) / sym.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * sym.size)


def coding_report(symbols: np.ndarray) -> dict[str, float]:
    """Coded bits (payload, and whole stream with header) beside the Shannon bound."""
    sym = np.asarray(symbols, dtype=np.uint8).reshape(-1)
    stream = encode_symbols(sym)
    bound = shannon_bits(sym)
    header = 0 if sym.size == 0 else 8 * (1 + (int(sym.max()) + 2) // 2)
    payload = 0 if sym.size == 0 else int(
        (huffman_lengths(np.bincount(sym))[sym]).sum()) if np.unique(sym).size > 1 else 0
    return {"symbols": int(sym.size), "shannon_bits": bound, "payload_bits": float(payload),
            "stream_bits": float(8 * stream.size), "header_bits": float(header),
            "overhead": (payload / bound - 1.0) if bound else 0.0}
