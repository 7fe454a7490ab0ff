"""The ANS entropy codec (constriction) and the `entropy` codec that keeps the smaller stream."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.core.errors import SlimFormatError
from slimkit.io.codec_ans import DECODE_SLICE, ans_decode, ans_encode, ans_header_bytes
from slimkit.io.codec_entropy import best_entropy_code, entropy_decode
from slimkit.io.codecs import decode_chain, encode_chain
from slimkit.io.entropy import encode_symbols, shannon_bits


def _skewed(bits: int, n: int, seed: int = 0) -> np.ndarray:
    k = 2**bits
    p = np.exp(-np.arange(k) / (k / 4))
    return np.random.default_rng(seed).choice(k, size=n, p=p / p.sum()).astype(np.uint8)


@given(st.lists(st.integers(0, 255), max_size=300))
@settings(max_examples=150, deadline=None)
def test_round_trip_any_symbols(values):
    sym = np.array(values, dtype=np.uint8)
    assert np.array_equal(ans_decode(ans_encode(sym), sym.size), sym)
    stream, coder = best_entropy_code(sym)
    assert np.array_equal(entropy_decode(stream, sym.size, coder), sym)


@pytest.mark.parametrize("values", [[], [0], [0, 0, 0], [7], [255, 255], [0, 255]])
def test_edge_cases(values):
    sym = np.array(values, dtype=np.uint8)
    assert np.array_equal(ans_decode(ans_encode(sym), sym.size), sym)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_payload_within_two_percent_of_the_shannon_bound(bits):
    sym = _skewed(bits, 20_000)
    stream = ans_encode(sym)
    payload_bits = 8 * (stream.size - ans_header_bytes(stream))
    assert payload_bits <= 1.02 * shannon_bits(sym) + 64


def test_ans_beats_huffman_on_a_skewed_three_bit_alphabet():
    sym = _skewed(3, 20_000)
    assert ans_encode(sym).size < encode_symbols(sym).size


def test_entropy_codec_keeps_the_smaller_stream():
    for sym in (_skewed(3, 20_000), _skewed(8, 300)):
        stored, stages = encode_chain(sym, [{"codec": "entropy"}])
        sizes = {"huffman": encode_symbols(sym).size, "ans": ans_encode(sym).size}
        assert stored["data"].size == min(sizes.values())
        assert stages[0]["coder"] == min(sizes, key=sizes.get)
        assert np.array_equal(decode_chain(stored, stages), sym)


def test_corruption_is_refused():
    sym = _skewed(4, 5_000)
    stream = ans_encode(sym)
    with pytest.raises(SlimFormatError):
        ans_decode(stream, sym.size + 1)            # counts no longer add up
    with pytest.raises(SlimFormatError):
        ans_decode(stream[:-4], sym.size)           # a word missing
    with pytest.raises(SlimFormatError):
        ans_decode(stream[:-1], sym.size)           # not whole words
    with pytest.raises(SlimFormatError):
        ans_decode(np.concatenate([stream, np.ones(4, np.uint8)]), sym.size)   # trailing data
    with pytest.raises(SlimFormatError):
        ans_decode(stream[:1], sym.size)            # header cut
    with pytest.raises(SlimFormatError):
        entropy_decode(stream, sym.size, "zip")


def test_flipped_payload_bits_never_decode_silently_to_other_symbols():
    sym = _skewed(4, 5_000)
    stream = ans_encode(sym)
    start = ans_header_bytes(stream)
    rng = np.random.default_rng(1)
    for _ in range(50):
        bad = stream.copy()
        at = int(rng.integers(start, bad.size))
        bad[at] ^= np.uint8(1 << int(rng.integers(0, 8)))
        try:
            out = ans_decode(bad, sym.size)
        except SlimFormatError:
            continue
        # a flip that survives every check must still give a stream with the stored histogram
        assert np.array_equal(np.bincount(out, minlength=16), np.bincount(sym, minlength=16))


def test_decoding_takes_about_a_byte_per_symbol():
    """8M zeros and a one code into a few bytes, so a small file may claim as many symbols as its
    bound allows: decoding must take little more than the uint8 result (it took 13 bytes a symbol,
    constriction's int32 and bincount's int64: a 16 KB .slim peaked at ~500 MB; issue 22)."""
    n = 8 << 20
    sym = np.zeros(n, np.uint8)
    sym[-1] = 1
    stream = ans_encode(sym)
    assert stream.size < 64
    tracemalloc.start()
    try:
        out = ans_decode(stream, n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, sym)
    assert peak < n + 16 * DECODE_SLICE, peak     # the result, and one slice's int32 and int64 copies
