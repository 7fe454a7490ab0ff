"""Canonical Huffman coding (`slimkit.io.entropy`), the `huffman` and `palette` codecs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codecs import decode_chain, encode_chain
from slimkit.io.entropy import (
    MAX_LEN,
    coding_report,
    decode_symbols,
    encode_symbols,
    huffman_lengths,
    shannon_bits,
)


def _round_trip(symbols: np.ndarray) -> np.ndarray:
    stream = encode_symbols(symbols)
    assert stream.dtype == np.uint8 and stream.ndim == 1
    out = decode_symbols(stream, symbols.size)
    assert out.dtype == np.uint8
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000])
@pytest.mark.parametrize("alphabet", [1, 2, 5, 32, 256])
def test_round_trip_sizes_and_alphabets(n, alphabet):
    symbols = np.random.default_rng(n + alphabet).integers(0, alphabet, n).astype(np.uint8)
    assert np.array_equal(_round_trip(symbols), symbols)


def test_empty_and_single_symbol_streams():
    assert encode_symbols(np.zeros(0, np.uint8)).size == 0
    assert decode_symbols(np.zeros(0, np.uint8), 0).size == 0
    one = np.full(5000, 7, np.uint8)
    stream = encode_symbols(one)
    assert stream.size <= 6  # header only: no payload bits for a one-symbol stream
    assert np.array_equal(decode_symbols(stream, one.size), one)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=400))
def test_round_trip_property(values):
    symbols = np.array(values, dtype=np.uint8)
    assert np.array_equal(_round_trip(symbols), symbols)


def test_lengths_are_limited_on_very_skewed_counts():
    counts = np.array([int(1.7**i) + 1 for i in range(40)], dtype=np.int64)  # Fibonacci-like
    lengths = huffman_lengths(counts)
    assert lengths.max() <= MAX_LEN
    assert sum(2.0 ** -n for n in lengths) == pytest.approx(1.0)
    symbols = np.repeat(np.arange(40, dtype=np.uint8), np.minimum(counts, 3000))
    assert np.array_equal(_round_trip(symbols), symbols)


@pytest.mark.parametrize("bits,init", [(4, "density"), (5, "linear"), (5, "density"), (6, "linear")])
def test_realistic_index_streams_within_two_percent_of_shannon(bits, init):
    # k-means cluster indices of heavy-tailed weights (about 3-5 bits of entropy per index);
    # below ~3 bits/symbol Huffman's whole-bit codewords can cost more than 2%
    from slimkit.sharing.kmeans import cluster_1d

    w = np.random.default_rng(bits).standard_t(5, size=30000)
    symbols = cluster_1d(w, 2**bits, init=init, max_iter=20).labels.astype(np.uint8)
    report = coding_report(symbols)
    assert report["payload_bits"] >= report["shannon_bits"] - 1e-6
    assert report["overhead"] < 0.02, report
    assert 8 * encode_symbols(symbols).size < 1.02 * shannon_bits(symbols) + 8 * 40


def test_corrupted_streams_raise_format_error():
    symbols = np.random.default_rng(1).integers(0, 20, 3000).astype(np.uint8)
    stream = encode_symbols(symbols)
    with pytest.raises(SlimFormatError, match="ends|hold"):
        decode_symbols(stream[: len(stream) // 2], symbols.size)
    with pytest.raises(SlimFormatError, match="trailing"):
        decode_symbols(np.concatenate([stream, np.zeros(4, np.uint8)]), symbols.size)
    bad = stream.copy()
    bad[1] ^= 0x30  # change a code length: no longer a complete prefix code
    with pytest.raises(SlimFormatError, match="prefix code"):
        decode_symbols(bad, symbols.size)
    with pytest.raises(SlimFormatError, match="too short|truncated"):
        decode_symbols(stream[:1], symbols.size)
    with pytest.raises(SlimFormatError, match="count"):
        decode_symbols(stream, -1)
    with pytest.raises(SlimFormatError, match="zero symbols"):
        decode_symbols(stream, 0)
    with pytest.raises(SlimFormatError, match="cannot hold"):
        decode_symbols(stream, 10**9)


def test_long_streams_decode_in_chunks_and_detect_bad_offsets():
    from slimkit.io.entropy import CHUNK

    rng = np.random.default_rng(4)
    symbols = np.minimum(rng.geometric(0.15, 3 * CHUNK + 17), 40).astype(np.uint8)
    stream = encode_symbols(symbols)
    assert np.array_equal(decode_symbols(stream, symbols.size), symbols)
    head = 1 + (int(symbols.max()) + 2) // 2
    offsets = stream[head:head + 12].view("<u4")
    assert offsets.size == 3 and np.all(np.diff(offsets) > 0)
    for delta in (1, -1):
        bad = stream.copy()
        bad[head:head + 12].view("<u4")[1] = int(offsets[1]) + delta
        with pytest.raises(SlimFormatError):
            decode_symbols(bad, symbols.size)
    with pytest.raises(SlimFormatError):
        decode_symbols(stream[:-3], symbols.size)


def test_random_bytes_never_crash():
    rng = np.random.default_rng(2)
    for _ in range(200):
        junk = rng.integers(0, 256, rng.integers(0, 40)).astype(np.uint8)
        try:
            decode_symbols(junk, int(rng.integers(0, 100)))
        except SlimFormatError:
            pass


def test_encode_rejects_non_uint8():
    with pytest.raises(TypeError, match="uint8"):
        encode_symbols(np.arange(4, dtype=np.int64))


@pytest.mark.parametrize("coder", ["huffman", "bitpack"])
def test_palette_chain_round_trip_is_lossless(coder):
    rng = np.random.default_rng(3)
    codebook = rng.normal(size=16).astype(np.float32)
    weight = codebook[rng.integers(0, 16, size=(30, 20))]
    stage = {"codec": "huffman"} if coder == "huffman" else {"codec": "bitpack", "bits": 4}
    stored, stages = encode_chain(weight, [{"codec": "palette", "bits": 4}, stage])
    assert stored["0.codebook"].dtype == np.float32 and stored["0.codebook"].size <= 16
    out = decode_chain(stored, stages)
    assert out.dtype == np.float32 and np.array_equal(out, weight)
    # params returned by encode may come back as options when a loaded model is re-saved
    again, _ = encode_chain(weight, [{"codec": "palette", **stages[0]}, {**stage, **stages[1]}])
    assert np.array_equal(again["data"], stored["data"])


def test_palette_is_bitwise_lossless():
    values = np.array([0.0, -0.0, np.nan, 1.5, -0.0], np.float32)
    stored, stages = encode_chain(values, [{"codec": "palette", "bits": 2}])
    out = decode_chain(stored, stages)
    assert out.tobytes() == values.tobytes()


def test_palette_rejects_too_many_values_and_bad_files():
    with pytest.raises(SlimError, match="do not fit 2 bits"):
        encode_chain(np.arange(5, dtype=np.float32), [{"codec": "palette", "bits": 2}])
    with pytest.raises(SlimError, match="float"):
        encode_chain(np.arange(5, dtype=np.int32), [{"codec": "palette"}])
    stored, stages = encode_chain(np.array([1.0, 2.0, 1.0], np.float32), [{"codec": "palette", "bits": 2}])
    broken = dict(stored, data=np.array([0, 5, 1], np.uint8))
    with pytest.raises(SlimFormatError, match="beyond a codebook"):
        decode_chain(broken, stages)
    lying = [dict(stages[0], shape=[10**9])]
    with pytest.raises(SlimFormatError, match="indices for shape"):
        decode_chain(stored, lying)
    with pytest.raises(SlimFormatError, match="codebook"):
        decode_chain(dict(stored, **{"0.codebook": np.zeros(9, np.float32)}), stages)


def test_huffman_codec_rejects_float_input_and_lying_shape():
    with pytest.raises(SlimError, match="uint8"):
        encode_chain(np.zeros(3, np.float32), [{"codec": "huffman"}])
    stored, stages = encode_chain(np.arange(10, dtype=np.uint8) % 3, [{"codec": "huffman"}])
    with pytest.raises(SlimFormatError):
        decode_chain(stored, [dict(stages[0], shape=[11])])


def test_entropy_report_of_a_shared_model():
    import torch

    from slimkit.io.artifact import set_codec
    from slimkit.io.codec_entropy import entropy_report

    layer = torch.nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([-0.5, 0.0, 0.1, 0.7])[torch.randint(0, 4, (30, 40))])
    set_codec(layer, "weight", [{"codec": "palette", "bits": 2}, {"codec": "huffman"}])
    report = entropy_report(torch.nn.Sequential(layer))
    assert set(report) == {"0.weight"}
    r = report["0.weight"]
    assert r["symbols"] == 1200 and r["payload_bits"] >= r["shannon_bits"] > 0


def test_both_decoders_agree(monkeypatch):
    import slimkit.io.entropy as entropy

    rng = np.random.default_rng(5)
    symbols = np.minimum(rng.geometric(0.2, 2 * entropy.CHUNK + 99), 60).astype(np.uint8)
    stream = encode_symbols(symbols)
    assert np.array_equal(decode_symbols(stream, symbols.size), symbols)
    monkeypatch.setattr(entropy, "DOUBLING_MAX", 0)  # force the lane decoder
    assert np.array_equal(decode_symbols(stream, symbols.size), symbols)
    with pytest.raises(SlimFormatError):
        decode_symbols(stream[:-2], symbols.size)
