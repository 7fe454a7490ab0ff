from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codecs import decode_chain, encode_chain, pack_bits, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
def test_bitpack_round_trip_every_width(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=(37, 11), dtype=np.uint8)
    stored, stages = encode_chain(values, [{"codec": "bitpack", "bits": bits}])
    assert stored["data"].nbytes == (values.size * bits + 7) // 8
    out = decode_chain(stored, stages)
    assert out.dtype == values.dtype and out.shape == values.shape
    assert np.array_equal(out, values)


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_property(bits, n, seed):
    values = np.random.default_rng(seed).integers(0, 2**bits, size=n, dtype=np.uint8)
    assert np.array_equal(unpack_bits(pack_bits(values, bits), bits, n), values)


def test_bitpack_rejects_out_of_range_values_and_bits():
    with pytest.raises(SlimError, match="values must lie"):
        encode_chain(np.array([0, 16], dtype=np.uint8), [{"codec": "bitpack", "bits": 4}])
    with pytest.raises(SlimError, match="bits must be"):
        encode_chain(np.array([0], dtype=np.uint8), [{"codec": "bitpack", "bits": 9}])


def test_bitpack_decode_refuses_lying_sizes():
    stored, stages = encode_chain(np.arange(8, dtype=np.uint8), [{"codec": "bitpack", "bits": 4}])
    stages[0]["shape"] = [10**12]
    with pytest.raises(SlimFormatError, match="cannot hold"):
        decode_chain(stored, stages)


def test_cast_chain_and_unknown_codec():
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    stored, stages = encode_chain(x, [{"codec": "cast", "to": "float16"}])
    assert stored["data"].dtype == np.float16
    out = decode_chain(stored, stages)
    assert out.dtype == np.float32 and np.allclose(out, x, atol=1e-3)
    with pytest.raises(SlimError, match="unknown codec"):
        encode_chain(x, [{"codec": "nope"}])
    with pytest.raises(SlimFormatError, match="unknown codec"):
        decode_chain(stored, [{"codec": "nope"}])
