"""The `palette` codec: an array with few distinct values -> uint8 indices + a codebook.

Lossless: the codebook holds the distinct values exactly. The indices go on as "data", so a
`bitpack` or `huffman` stage usually follows.

>>> chain = [{"codec": "palette", "bits": 2}, {"codec": "bitpack", "bits": 2}]
>>> stored, stages = encode_chain(np.array([0.5, -1.0, 0.5, 2.0], np.float32), chain)
>>> decode_chain(stored, stages).tolist()
[0.5, -1.0, 0.5, 2.0]
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codecs import Codec, _dtype, _shape, register_codec


@register_codec
class Palette(Codec):
    """Distinct values sorted into a codebook (side array "codebook"), data = uint8 indices."""

    name = "palette"

    def encode(self, data, bits: int | None = None, **_):
        arr = np.asarray(data)
        if arr.dtype.kind != "f":
            raise SlimError(f"palette: expects a float array, got {arr.dtype}")
        # unique bit patterns, not values: -0.0 and NaN payloads survive exactly
        flat = np.ascontiguousarray(arr).reshape(-1)
        patterns, indices = np.unique(flat.view(f"u{arr.dtype.itemsize}"), return_inverse=True)
        codebook = patterns.view(arr.dtype)
        if bits is None:
            bits = max(1, math.ceil(math.log2(max(2, codebook.size))))
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise SlimError(f"palette: bits must be an int in 1..8, got {bits!r}")
        if codebook.size > 2**bits:
            raise SlimError(f"palette: {codebook.size} distinct values do not fit {bits} bits "
                            f"(at most {2**bits}); cluster the weights first")
        # shape and dtype travel with the indices and the codebook: the manifest stays small
        return indices.astype(np.uint8).reshape(arr.shape), {"codebook": codebook}, {"bits": bits}

    def side_keys(self, params):
        return ("codebook",)

    def decode(self, data, side, params):
        bits = params.get("bits")
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise SlimFormatError(f"palette: bits {bits!r} outside 1..8")
        shape = _shape(params, "palette") if "shape" in params else data.shape
        codebook = side.get("codebook")
        if codebook is None or codebook.ndim != 1 or codebook.dtype.kind != "f":
            raise SlimFormatError("palette: codebook missing or not a 1-D float array")
        if "dtype" in params and codebook.dtype != _dtype(params, "palette"):
            raise SlimFormatError(f"palette: codebook is {codebook.dtype}, params say {params['dtype']}")
        if not 1 <= codebook.size <= 2**bits and math.prod(shape):
            raise SlimFormatError(f"palette: codebook of {codebook.size} entries for {bits} bits")
        if data.dtype != np.uint8 or data.size != math.prod(shape):
            raise SlimFormatError(f"palette: {data.size} indices for shape {list(shape)}")
        if data.size and int(data.max()) >= codebook.size:
            raise SlimFormatError(f"palette: index {int(data.max())} beyond a codebook of {codebook.size}")
        return codebook[data.reshape(-1)].reshape(shape)
