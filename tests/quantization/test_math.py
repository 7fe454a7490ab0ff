"""Quantization math: codes, scales, bit-packing round trips, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.io.codecs import decode_chain, encode_chain
from slimkit.nn.quant_math import (
    Granularity,
    check_bits,
    group_view,
    int8_matmul,
    quantize_int8_rows,
    quantize_per_token,
    rtn_quantize,
)


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_bitpack_round_trip_every_width(bits):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(bits))
    qw = rtn_quantize(w, bits, symmetric=bits > 1, granularity="group", group_size=16)
    codes = qw.codes.numpy()
    assert codes.max() < 2**bits
    stored, stages = encode_chain(codes, [{"codec": "bitpack", "bits": bits}])
    assert stored["data"].nbytes == (codes.size * bits + 7) // 8      # 4 bits = half a byte each
    assert np.array_equal(decode_chain(stored, stages), codes)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", list(Granularity))
def test_rtn_error_shrinks_with_bits(symmetric, granularity):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    errors = [float((rtn_quantize(w, b, symmetric, granularity, 32).dequantize() - w).pow(2).mean())
              for b in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_symmetric_rtn_is_within_half_a_step():
    w = torch.randn(8, 64)
    qw = rtn_quantize(w, 4, True, "channel")
    step = qw.scale.float()  # (8, 1)
    assert torch.all((qw.dequantize() - w).abs() <= step / 2 + 1e-6)


def test_asymmetric_keeps_zero_exact_and_uses_range():
    w = torch.rand(4, 32) + 0.5            # all positive: asymmetric spends all levels on [0, max]
    qa = rtn_quantize(w, 3, False, "channel")
    qs = rtn_quantize(w, 3, True, "channel")
    assert (qa.dequantize() - w).abs().mean() < (qs.dequantize() - w).abs().mean()
    z = rtn_quantize(torch.zeros(2, 8), 4, False, "channel").dequantize()
    assert torch.equal(z, torch.zeros(2, 8))


def test_mse_clipping_is_no_worse_than_minmax():
    w = torch.randn(16, 128)
    w[0, 0] = 20.0  # an outlier
    plain = (rtn_quantize(w, 3, True, "group", 32).dequantize() - w).pow(2).sum()
    mse = (rtn_quantize(w, 3, True, "group", 32, mse=True).dequantize() - w).pow(2).sum()
    assert mse <= plain


def test_fp16_scales_are_stored_exactly():
    w = torch.randn(8, 64)
    qw = rtn_quantize(w, 4, True, "group", 32, scale_dtype=torch.float16)
    assert qw.scale.dtype == torch.float16
    assert torch.allclose(qw.dequantize(), w, atol=float(qw.scale.float().max()))


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5, "4", True])
def test_bad_bits_name_the_parameter(bits):
    with pytest.raises(ValueError, match="bits"):
        check_bits(bits)


def test_group_size_must_divide_columns():
    with pytest.raises(ValueError, match="group_size=48 does not divide the input dimension 64"):
        group_view(torch.zeros(4, 64), "group", 48)


def test_one_bit_needs_asymmetric():
    with pytest.raises(ValueError, match="symmetric"):
        rtn_quantize(torch.randn(2, 8), 1, True, "channel")
    assert rtn_quantize(torch.randn(2, 8), 1, False, "channel").codes.max() <= 1


def test_int8_rows_and_tokens():
    w = torch.randn(16, 32)
    q, s = quantize_int8_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert torch.allclose(q.float() * s[:, None], w, atol=float(s.max()) / 2 + 1e-6)
    x = torch.randn(5, 32)
    xq, xs = quantize_per_token(x)
    assert xq.dtype == torch.int8 and xs.shape == (5, 1)
    assert torch.allclose(xq.float() * xs, x, atol=float(xs.max()) / 2 + 1e-6)
    zeros, _ = quantize_per_token(torch.zeros(2, 8))      # no division by zero
    assert torch.equal(zeros, torch.zeros(2, 8, dtype=torch.int8))


@pytest.mark.parametrize("rows", [0, 1, 3, 17, 64])
def test_int8_matmul_exact_for_any_row_count(rows):
    a = torch.randint(-127, 128, (rows, 40), dtype=torch.int8)
    b = torch.randint(-127, 128, (24, 40), dtype=torch.int8)
    out = int8_matmul(a, b.t())
    assert out.dtype == torch.int32
    assert torch.equal(out, a.int() @ b.int().t())
