"""GGML blocks from slimkit codes: what maps exactly, read back by gguf's own dequantizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.export import gguf_blocks as gb
from slimkit.nn.quant_math import dequantize, group_view

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def _codes(rng, rows, cols, bits, symmetric, group):
    codes = rng.integers(1 if symmetric else 0, 2**bits, (rows, cols)).astype(np.uint8)
    scale = rng.uniform(1e-3, 0.1, (rows, cols // group)).astype(np.float16)
    zero = None if symmetric else rng.integers(0, 2**bits, scale.shape).astype(np.uint8)
    return codes, scale, zero


def _slimkit_values(codes, scale, zero, bits, group):
    """What slimkit decodes the codes to (`slimkit.nn.quant_math.dequantize`)."""
    cg = group_view(torch.from_numpy(codes), "group", group)
    z = None if zero is None else torch.from_numpy(zero)
    return dequantize(cg, torch.from_numpy(scale).float(), z, bits).reshape(codes.shape).numpy()


@pytest.mark.parametrize("bits,group,qtype", [(4, 32, "Q4_0"), (4, 128, "Q4_0"), (3, 64, "Q4_0"),
                                              (2, 32, "Q4_0"), (8, 32, "Q8_0"), (6, 96, "Q8_0")])
def test_symmetric_codes_map_bit_exactly(bits, group, qtype):
    rng = np.random.default_rng(bits + group)
    codes, scale, _ = _codes(rng, 6, 384, bits, True, group)
    mapped = gb.map_codes(codes, scale, None, bits, group)
    assert mapped.qtype == Q[qtype] and mapped.exact
    back = gb.dequantize(mapped.blocks, mapped.qtype).reshape(codes.shape)
    np.testing.assert_array_equal(back, _slimkit_values(codes, scale, None, bits, group))


@pytest.mark.parametrize("bits,qtype", [(4, "Q4_1"), (2, "Q4_1"), (5, "Q8_0"), (7, "Q8_0")])
def test_asymmetric_codes_keep_their_codes(bits, qtype):
    rng = np.random.default_rng(bits)
    codes, scale, zero = _codes(rng, 5, 128, bits, False, 64)
    mapped = gb.map_codes(codes, scale, zero, bits, 64)
    assert mapped.qtype == Q[qtype]
    back = gb.dequantize(mapped.blocks, mapped.qtype).reshape(codes.shape)
    want = _slimkit_values(codes, scale, zero, bits, 64)
    if qtype == "Q8_0":   # q = code - zero fits int8: nothing is rounded
        assert mapped.exact
        np.testing.assert_array_equal(back, want)
    else:                 # Q4_1's minimum m = -scale * zero is rounded to float16: half an fp16 ulp of m at most
        m = np.repeat(scale.astype(np.float32) * zero, 64, axis=1)
        assert np.all(np.abs(back - want) <= m * 2.0**-11 + 1e-12)
        # the codes themselves are untouched: (back - m_block) / d gives them back
        d = np.repeat(scale.astype(np.float32), 64, axis=1)
        m_half = np.repeat((-scale.astype(np.float32) * zero).astype(np.float16).astype(np.float32), 64, axis=1)
        np.testing.assert_array_equal(np.rint((back - m_half) / d), codes)


def test_asymmetric_8bit_maps_only_when_code_minus_zero_fits_int8():
    codes = np.full((2, 32), 255, np.uint8)
    scale = np.full((2, 1), 0.01, np.float16)
    fits = gb.map_codes(codes, scale, np.full((2, 1), 128, np.uint8), 8, 32)
    assert fits.qtype == Q.Q8_0 and fits.exact
    assert gb.map_codes(codes, scale, np.zeros((2, 1), np.uint8), 8, 32) is None   # 255 - 0 > 127


def test_int8_rows_with_float32_scales_keep_codes_and_round_scales():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (4, 64)).astype(np.int8)
    scale = rng.uniform(1e-3, 1e-2, (4, 1)).astype(np.float32)
    mapped = gb.map_codes(q, scale, None, 8, 64)
    assert mapped.qtype == Q.Q8_0 and not mapped.exact      # fp32 scales are not fp16 numbers
    back = gb.dequantize(mapped.blocks, mapped.qtype).reshape(q.shape)
    want = q.astype(np.float32) * scale
    assert np.all(np.abs(back - want) <= np.abs(want) * 2.0**-11 + 1e-12)
    halves = scale.astype(np.float16)                          # with fp16-exact scales it is exact
    exact = gb.map_codes(q, halves, None, 8, 64)
    assert exact.exact
    np.testing.assert_array_equal(gb.dequantize(exact.blocks, Q.Q8_0).reshape(q.shape), q * halves.astype(np.float32))


@pytest.mark.parametrize("rows,cols,group", [(4, 64, 16), (4, 48, 48), (4, 40, 8)])
def test_groups_that_are_not_whole_blocks_do_not_map(rows, cols, group):
    codes, scale, _ = _codes(np.random.default_rng(1), rows, cols, 4, True, group)
    assert gb.map_codes(codes, scale, None, 4, group) is None


def test_one_scale_per_tensor_maps():
    codes, _, _ = _codes(np.random.default_rng(2), 3, 64, 4, True, 64)
    scale = np.full((1, 1), 0.02, np.float16)
    mapped = gb.map_codes(codes, scale, None, 4, 3 * 64)
    back = gb.dequantize(mapped.blocks, mapped.qtype).reshape(codes.shape)
    np.testing.assert_array_equal(back, (codes.astype(np.float32) - 8) * np.float32(scale[0, 0]))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "F16"])
def test_requantize_is_ggufs_reference_quantizer(name):
    w = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    data = gb.requantize(w, Q[name])
    np.testing.assert_array_equal(data, gguf.quants.quantize(w, Q[name]))
    tol = {"Q8_0": 0.02, "Q4_0": 0.4, "Q4_1": 0.3, "F16": 1e-3}[name]
    assert np.abs(gb.dequantize(data, Q[name]).reshape(w.shape) - w).max() < tol
