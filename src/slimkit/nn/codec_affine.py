"""The `affine` codec: a float tensor as round-to-nearest integer codes with per-row or per-group
scales (and zero points when asymmetric); decoding gives the dequantized floats back.

Unlike the runtime modules (whose state dict holds the codes), this codec makes a quantized tensor
decode to a plain float tensor of its original dtype, so a checkpoint compressed without any
architecture loads back with `slimkit.load_state_dict`. The math is `slimkit.nn.quant_math`'s:
codes in [0, 2**bits), `w ~ scale * (code - zero)` with zero = 2**(bits-1) when symmetric. A
tensor of shape (rows, ...) is quantized as a (rows, cols) matrix, cols = the product of the other
dimensions, in groups of `group_size` columns (`group_size` = cols: one scale per row).
The codes go on as "data", so a `bitpack` stage usually follows for fewer than 8 bits.

>>> chain = [{"codec": "affine", "bits": 4, "group_size": 32}, {"codec": "bitpack", "bits": 4}]
>>> stored, stages = encode_chain(np.random.randn(8, 64).astype(np.float32), chain)
>>> decode_chain(stored, stages).shape
(8, 64)
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codecs import Codec, _shape, register_codec
from slimkit.nn.quant_math import Granularity, dequantize, rtn_quantize

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
SCALE_DTYPES = ("float16", "float32")


def matrix_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(rows, cols) of a tensor viewed as a matrix: rows = first dimension (1 for a scalar or 1-D)."""
    if len(shape) < 2:
        return 1, int(math.prod(shape))
    return int(shape[0]), int(math.prod(shape[1:]))


def quantize_block(w, bits: int, symmetric: bool, group_size: int, scale_dtype: str, mse: bool = False):
    """Codes (uint8 torch tensor, same shape as `w`), scale (rows, groups) and zero (or None) of
    a 2-D torch block, by `slimkit.nn.quant_math.rtn_quantize` (rows are independent, so a tensor can
    be quantized in blocks of rows and the results concatenated)."""
    import torch


    gran = Granularity.CHANNEL if group_size == w.shape[1] else Granularity.GROUP
    qw = rtn_quantize(w, bits, symmetric, gran, group_size, mse, getattr(torch, scale_dtype))
    return qw.codes, qw.scale, qw.zero


def dequantize_block(codes, scale, zero, bits: int, group_size: int):
    """float32 torch values of a 2-D block of codes (inverse of `quantize_block`, up to rounding)."""

    rows, cols = codes.shape
    grouped = codes.reshape(rows, cols // group_size, group_size)
    return dequantize(grouped, scale.float(), zero, bits).reshape(rows, cols)


def to_numpy_dtype(values, dtype: str) -> np.ndarray:
    """A float32 torch tensor as a numpy array of `dtype` (bfloat16 as its uint16 bit patterns, the
    way `slimkit.io.artifact` stores bfloat16)."""
    import torch

    if dtype == "bfloat16":
        return values.to(torch.bfloat16).view(torch.uint16).numpy()
    return values.numpy().astype(dtype, copy=False)


@register_codec
class Affine(Codec):
    """Float tensor -> uint8 codes (data) + "scale" (+ "zero") side arrays; decodes to floats."""

    name = "affine"

    def encode(self, data, bits: int = 8, symmetric: bool = True, group_size: int | None = None,
               scale_dtype: str = "float32", mse: bool = False, **_):
        import torch

        arr = np.asarray(data)
        if arr.dtype.kind != "f" or arr.dtype.name not in FLOAT_DTYPES:
            raise SlimError(f"affine: expects a float16/32/64 array, got {arr.dtype}")
        rows, cols = matrix_shape(arr.shape)
        group = check_options(bits, symmetric, cols if group_size is None else group_size, cols, scale_dtype)
        w = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(rows, cols))
        codes, scale, zero = quantize_block(w, bits, symmetric, group, scale_dtype, mse)
        side = {"scale": scale.numpy()} | ({} if zero is None else {"zero": zero.numpy()})
        params = {"bits": bits, "symmetric": symmetric, "group_size": group, "scale_dtype": scale_dtype,
                  "shape": list(arr.shape), "dtype": arr.dtype.name}   # scale_dtype: re-saving keeps it
        return codes.numpy().reshape(arr.shape), side, params

    def side_keys(self, params):
        return ("scale",) if params.get("symmetric", True) else ("scale", "zero")

    def decode(self, data, side, params):
        import torch

        bits, symmetric, group = params.get("bits"), params.get("symmetric"), params.get("group_size")
        shape = _shape(params, "affine")
        dtype = params.get("dtype")
        if not isinstance(bits, int) or not 1 <= bits <= 8 or not isinstance(symmetric, bool):
            raise SlimFormatError(f"affine: bad parameters (bits={bits!r}, symmetric={symmetric!r})")
        if dtype not in FLOAT_DTYPES:
            raise SlimFormatError(f"affine: decoded dtype {dtype!r} is not a float type")
        rows, cols = matrix_shape(shape)
        if not isinstance(group, int) or group < 1 or cols % group:
            raise SlimFormatError(f"affine: group_size {group!r} does not divide {cols} columns")
        if data.dtype != np.uint8 or data.size != rows * cols:
            raise SlimFormatError(f"affine: {data.size} codes for shape {list(shape)}")
        scale, zero = side.get("scale"), side.get("zero")
        if scale is None or scale.dtype.name not in SCALE_DTYPES or scale.shape != (rows, cols // group):
            raise SlimFormatError(f"affine: scale must be float16/32 of shape {[rows, cols // group]}")
        if not symmetric and (zero is None or zero.dtype != np.uint8 or zero.shape != scale.shape):
            raise SlimFormatError(f"affine: zero points must be uint8 of shape {[rows, cols // group]}")
        if rows * cols == 0:
            return np.zeros(shape, dtype=np.uint16 if dtype == "bfloat16" else dtype)
        codes = torch.from_numpy(np.array(data, copy=True).reshape(rows, cols))
        z = None if symmetric else torch.from_numpy(np.array(zero, copy=True))
        values = dequantize_block(codes, torch.from_numpy(np.array(scale, copy=True)), z, bits, group)
        return to_numpy_dtype(values, dtype).reshape(shape)


def check_options(bits: object, symmetric: object, group_size: object, cols: int, scale_dtype: object) -> int:
    """The group length, after checking the codec options (one-line SlimError on a bad one)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise SlimError(f"affine: bits must be an int in 1..8, got {bits!r}")
    if not isinstance(symmetric, bool) or (symmetric and bits < 2):
        raise SlimError("affine: symmetric must be true or false (and needs bits >= 2)")
    if scale_dtype not in SCALE_DTYPES:
        raise SlimError(f"affine: scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        raise SlimError(f"affine: group_size {group_size!r} does not divide the {cols} columns")
    return group_size
