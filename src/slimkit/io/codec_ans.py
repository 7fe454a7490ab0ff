"""The `ans` codec: entropy-code a uint8 array with asymmetric numeral systems (`constriction`).

The model is the stream's own symbol histogram (order 0), stored in the stream, so the payload
lands within a fraction of a percent of the Shannon bound (Huffman loses up to a bit per symbol on
skewed 2-3 bit alphabets).

>>> chain = [{"codec": "palette", "bits": 3}, {"codec": "ans"}]

Stream layout (uint8): byte 0 = m - 1 (m = largest symbol + 1); then m symbol counts as LEB128
varints; zero padding to a multiple of 4 bytes; then constriction's compressed uint32 words
(little-endian); none when only symbol 0 occurs. An empty input gives an empty stream. The
symbol count is kept by the caller (the codec's params). Decoding checks that the counts add up
to the symbol count and that the coder ends exactly empty, so corruption raises
`SlimFormatError` instead of decoding garbage.
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codecs import Codec, _dtype, _shape, register_codec

# Symbols decoded per call: constriction returns them as int32 (and bincount counts them as int64),
# so decoding a whole stream at once took 12 bytes per symbol on top of the uint8 result: a 16 KB
# stream whose histogram claims 64M symbols (a legitimate stream of 64M zeros takes a few bytes)
# peaked at ~500 MB before it was refused.
DECODE_SLICE = 1 << 20


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_varints(buf: np.ndarray, start: int, count: int) -> tuple[np.ndarray, int]:
    values = np.zeros(count, dtype=np.int64)
    pos = start
    for i in range(count):
        value, shift = 0, 0
        while True:
            if pos >= buf.size or shift > 35:
                raise SlimFormatError("ans: the symbol-count header is truncated or malformed")
            byte = int(buf[pos])
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values[i] = value
    return values, pos


def _model(counts: np.ndarray):
    import constriction

    probs = counts.astype(np.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probs, perfect=False)


def ans_encode(symbols: np.ndarray) -> np.ndarray:
    """uint8 symbols -> one self-describing ANS stream (uint8).

    >>> s = np.array([0, 0, 1, 0, 2], np.uint8)
    >>> ans_decode(ans_encode(s), 5).tolist()
    [0, 0, 1, 0, 2]
    """
    import constriction

    sym = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    if sym.size == 0:
        return np.zeros(0, dtype=np.uint8)
    counts = np.bincount(sym)
    header = bytes([counts.size - 1]) + _varints(counts)
    header += b"\0" * (-len(header) % 4)
    if counts.size == 1:  # only symbol 0: the header says it all
        return np.frombuffer(header, dtype=np.uint8).copy()
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(sym.astype(np.int32), _model(counts))
    words = np.asarray(coder.get_compressed(), dtype="<u4")
    return np.concatenate([np.frombuffer(header, dtype=np.uint8), words.view(np.uint8)])


def ans_header_bytes(stream: np.ndarray) -> int:
    """Bytes of `stream` before the compressed words (the histogram header and its padding)."""
    buf = np.asarray(stream, dtype=np.uint8)
    if buf.size == 0:
        return 0
    _, pos = _read_varints(buf, 1, int(buf[0]) + 1)
    return pos + (-pos % 4)


def ans_decode(stream: np.ndarray, count: int) -> np.ndarray:
    """Inverse of `ans_encode`; raises SlimFormatError for any inconsistent stream."""
    import constriction

    buf = np.asarray(stream)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise SlimFormatError("ans: the stream must be a 1-D uint8 array")
    if count == 0:
        if buf.size:
            raise SlimFormatError(f"ans: {buf.size} bytes of data for zero symbols")
        return np.zeros(0, dtype=np.uint8)
    if buf.size == 0:
        raise SlimFormatError(f"ans: empty stream for {count} symbols")
    m = int(buf[0]) + 1
    counts, pos = _read_varints(buf, 1, m)
    if int(counts.sum()) != count or counts[-1] == 0:
        raise SlimFormatError(f"ans: symbol counts add up to {int(counts.sum())}, expected {count}")
    pos += -pos % 4
    payload = buf[pos:]
    if payload.size % 4:
        raise SlimFormatError("ans: the payload is not a whole number of 32-bit words")
    if m == 1:
        if payload.size:
            raise SlimFormatError(f"ans: {payload.size} bytes of data for a one-symbol stream")
        return np.zeros(count, dtype=np.uint8)
    words = payload.view("<u4").astype(np.uint32)
    out = np.empty(count, dtype=np.uint8)
    seen = np.zeros(m, dtype=np.int64)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        model = _model(counts)
        for start in range(0, count, DECODE_SLICE):   # constriction returns int32: 4 bytes a symbol
            part = np.asarray(coder.decode(model, min(DECODE_SLICE, count - start)))
            seen += np.bincount(part, minlength=m)[:m]
            out[start:start + part.size] = part
        empty = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise SlimFormatError(f"ans: corrupt stream ({exc})") from None
    if not empty:
        raise SlimFormatError("ans: the stream holds more data than its symbols (corrupt)")
    if seen.tolist() != counts.tolist():
        raise SlimFormatError("ans: decoded symbols do not match the stored histogram (corrupt)")
    return out


@register_codec
class Ans(Codec):
    """uint8 symbols -> one ANS stream (its histogram model travels inside it)."""

    name = "ans"

    def encode(self, data, **_):
        arr = np.asarray(data)
        if arr.dtype != np.uint8:
            raise SlimError(f"ans: expects uint8 symbols (e.g. after palette), got {arr.dtype}")
        return ans_encode(arr), {}, {"shape": list(arr.shape)}

    def decode(self, data, side, params):
        shape = _shape(params, "ans")
        if "dtype" in params and _dtype(params, "ans") != np.uint8:
            raise SlimFormatError("ans: decoded dtype must be uint8")
        return ans_decode(data, math.prod(shape)).reshape(shape)
