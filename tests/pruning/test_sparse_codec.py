"""The `sparse` codec: round trips on both index paths, edge cases, and refusal of bad files."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codec_sparse import Sparse, gaps_to_symbols, symbols_to_positions
from slimkit.io.codecs import decode_chain, encode_chain


def _tensor(shape, density, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(dtype)


@pytest.mark.parametrize("index", ["auto", "mask", "gaps"])
@pytest.mark.parametrize("density", [0.0, 0.003, 0.08, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip(index, density, dtype):
    w = _tensor((30, 64), density, dtype)
    stored, stages = encode_chain(w, [{"codec": "sparse", "index": index}])
    assert stored["data"].dtype == dtype and stored["data"].size == np.count_nonzero(w)
    back = decode_chain(stored, stages)
    assert back.dtype == w.dtype and np.array_equal(back, w)


def test_data_is_nonzero_values_in_row_major_order():
    w = np.array([[0, 1.5, 0], [-2, 0, 3]], dtype=np.float32)
    stored, _ = encode_chain(w, [{"codec": "sparse"}])
    assert stored["data"].tolist() == [1.5, -2.0, 3.0]


def test_auto_picks_the_smaller_index():
    sparse, dense = _tensor((100, 100), 0.02), _tensor((100, 100), 0.6)
    assert encode_chain(sparse, [{"codec": "sparse"}])[1][0]["index"] == "gaps"
    assert encode_chain(dense, [{"codec": "sparse", "entropy": False}])[1][0]["index"] == "mask"
    stored, _ = encode_chain(sparse, [{"codec": "sparse"}])
    assert stored["0.gaps"].nbytes < (100 * 100) // 8
    # with entropy-coded gaps a 40%-zero tensor beats the mask (order-0 entropy 0.971 bit/element)
    stored, stages = encode_chain(dense, [{"codec": "sparse"}])
    side = stored[f"0.{stages[0]['index']}"]
    assert side.nbytes <= (100 * 100) // 8
    assert np.array_equal(decode_chain(stored, stages), dense)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.96, 0.99])
def test_entropy_coded_gaps_are_never_larger_than_packed_ones(sparsity):
    w = _tensor((300, 64), sparsity)
    packed, _ = encode_chain(w, [{"codec": "sparse", "entropy": False}])
    coded, stages = encode_chain(w, [{"codec": "sparse"}])
    side = lambda stored: sum(v.nbytes for k, v in stored.items() if k != "data")  # noqa: E731
    assert side(coded) <= side(packed)
    assert np.array_equal(decode_chain(coded, stages), w)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (7,), (3, 1, 1)])
def test_empty_and_tiny_tensors(shape):
    w = _tensor(shape, 0.5)
    for index in ("auto", "mask", "gaps"):
        stored, stages = encode_chain(w, [{"codec": "sparse", "index": index}])
        assert np.array_equal(decode_chain(stored, stages), w)


def test_all_zero_tensor_keeps_a_mask_even_when_gaps_are_asked():
    w = np.zeros((64, 64), dtype=np.float32)
    stored, stages = encode_chain(w, [{"codec": "sparse", "index": "gaps"}])
    assert stages[0]["index"] == "mask" and stored["0.mask"].nbytes == 64 * 64 // 8
    assert np.array_equal(decode_chain(stored, stages), w)


def test_long_gaps_use_escapes():
    w = np.zeros(5000, dtype=np.float32)
    w[[0, 1, 700, 4999]] = [1, 2, 3, 4]
    for bits in (2, 4, 8):
        stored, stages = encode_chain(w, [{"codec": "sparse", "index": "gaps", "gap_bits": bits}])
        assert stages[0]["gap_bits"] == bits
        assert np.array_equal(decode_chain(stored, stages), w)


def test_gap_symbols_are_plain_uint8_for_an_entropy_coder():
    pos = np.array([0, 3, 300, 301])
    sym = gaps_to_symbols(pos, 8)
    assert sym.dtype == np.uint8 and sym.tolist() == [0, 2, 255, 41, 0]
    assert symbols_to_positions(sym, 8, 302).tolist() == pos.tolist()


def test_chains_compose_and_params_reencode():
    w = _tensor((40, 40), 0.1)
    chain = [{"codec": "sparse"}, {"codec": "cast", "to": "float16"}]
    stored, stages = encode_chain(w, chain)
    assert stored["data"].dtype == np.float16
    back = decode_chain(stored, stages)
    assert np.array_equal(back, w.astype(np.float16).astype(np.float32))
    # params written by encode come back as options when a loaded model is saved again
    again = [{k: v for k, v in s.items() if k not in ("side",)} for s in stages]
    stored2, _ = encode_chain(back, again)
    assert np.array_equal(stored2["data"], stored["data"])


def test_bad_options_are_one_line_errors():
    with pytest.raises(SlimError, match="index"):
        encode_chain(np.ones(4, np.float32), [{"codec": "sparse", "index": "csr"}])
    with pytest.raises(SlimError, match="gap_bits"):
        encode_chain(np.ones(4, np.float32), [{"codec": "sparse", "gap_bits": 9}])


@pytest.mark.parametrize("index", ["mask", "gaps"])
def test_corrupt_files_are_refused(index):
    w = _tensor((20, 20), 0.1)
    stored, stages = encode_chain(w, [{"codec": "sparse", "index": index}])
    codec, params = Sparse(), stages[0]
    side = {index: stored[f"0.{index}"]}
    with pytest.raises(SlimFormatError, match="values"):
        codec.decode(stored["data"][:-1], side, params)
    with pytest.raises(SlimFormatError):
        codec.decode(stored["data"], {index: side[index][:-1]}, params)
    with pytest.raises(SlimFormatError):
        codec.decode(stored["data"], side, {**params, "nnz": 10**9})
    with pytest.raises(SlimFormatError):
        codec.decode(stored["data"], side, {**params, "shape": [5, 5]})


def test_gap_stream_pointing_outside_is_refused():
    with pytest.raises(SlimFormatError, match="outside"):
        symbols_to_positions(np.array([3, 9], np.uint8), 8, 10)
    with pytest.raises(SlimFormatError, match="escape"):
        symbols_to_positions(np.array([255], np.uint8), 8, 1000)
