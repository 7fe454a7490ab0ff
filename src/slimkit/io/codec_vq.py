"""The `vq` codec: a float array whose length-`dim` rows take few distinct values -> one index per
row + a codebook of the distinct rows (vector weight sharing, e.g. Deep k-Means on conv kernels).

Lossless: the codebook holds the distinct rows bit for bit. The indices (uint8 up to 256 rows,
else uint16) go on as "data", so an entropy stage usually follows.

>>> chain = [{"codec": "vq", "dim": 9}, {"codec": "entropy"}]
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codecs import Codec, _dtype, _shape, register_codec

MAX_CODES = 1 << 16


@register_codec
class VectorPalette(Codec):
    """Rows of `dim` values -> codebook of distinct rows (side array "codebook") + row indices."""

    name = "vq"

    def encode(self, data, dim: int | None = None, **_):
        arr = np.asarray(data)
        if arr.dtype.kind != "f":
            raise SlimError(f"vq: expects a float array, got {arr.dtype}")
        if not isinstance(dim, int) or dim < 1 or arr.size % dim:
            raise SlimError(f"vq: dim must be a positive int dividing {arr.size} values, got {dim!r}")
        rows = np.ascontiguousarray(arr).reshape(-1, dim)
        patterns = rows.view(np.dtype((np.void, dim * arr.dtype.itemsize))).reshape(-1)
        _, first, inverse = np.unique(patterns, return_index=True, return_inverse=True)
        if first.size > MAX_CODES:
            raise SlimError(f"vq: {first.size} distinct rows exceed {MAX_CODES}; cluster the weights first")
        codebook = rows[first]
        index_dtype = np.uint8 if first.size <= 256 else np.uint16
        params = {"shape": list(arr.shape), "dtype": str(arr.dtype), "dim": dim}
        return inverse.reshape(-1).astype(index_dtype), {"codebook": codebook}, params

    def side_keys(self, params):
        return ("codebook",)

    def decode(self, data, side, params):
        shape, dtype, dim = _shape(params, "vq"), _dtype(params, "vq"), params.get("dim")
        size = math.prod(shape)
        if not isinstance(dim, int) or dim < 1 or size % dim:
            raise SlimFormatError(f"vq: dim {dim!r} does not divide a tensor of {size} elements")
        codebook = side.get("codebook")
        if codebook is None or codebook.ndim != 2 or codebook.shape[1] != dim or codebook.dtype != dtype:
            raise SlimFormatError(f"vq: codebook must be a 2-D {dtype} array with {dim} columns")
        if not 1 <= codebook.shape[0] <= MAX_CODES and size:
            raise SlimFormatError(f"vq: codebook of {codebook.shape[0]} rows")
        if data.dtype not in (np.uint8, np.uint16) or data.ndim != 1 or data.size != size // dim:
            raise SlimFormatError(f"vq: {data.size} indices for {size // dim} rows")
        if data.size and int(data.max()) >= codebook.shape[0]:
            raise SlimFormatError(f"vq: index {int(data.max())} beyond a codebook of {codebook.shape[0]}")
        return codebook[data].reshape(shape)
