"""The `huffman` codec: entropy-code a uint8 array (e.g. palette indices) with canonical Huffman.

>>> chain = [{"codec": "palette", "bits": 5}, {"codec": "huffman"}]
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.errors import SlimError, SlimFormatError
from slimkit.io.codecs import Codec, _dtype, _shape, register_codec
from slimkit.io.entropy import decode_symbols, encode_symbols


@register_codec
class Huffman(Codec):
    """uint8 symbols -> one canonical-Huffman stream (the code table travels inside it)."""

    name = "huffman"

    def encode(self, data, **_):
        arr = np.asarray(data)
        if arr.dtype != np.uint8:
            raise SlimError(f"huffman: expects uint8 symbols (e.g. after palette), got {arr.dtype}")
        return encode_symbols(arr), {}, {"shape": list(arr.shape)}

    def decode(self, data, side, params):
        shape = _shape(params, "huffman")
        if "dtype" in params and _dtype(params, "huffman") != np.uint8:
            raise SlimFormatError("huffman: decoded dtype must be uint8")
        return decode_symbols(data, math.prod(shape)).reshape(shape)


def entropy_report(model) -> dict[str, dict[str, float]]:
    """For each tensor stored through a `huffman` stage: coded bits beside the Shannon bound.

    >>> entropy_report(model)["fc1.weight"]
    {'symbols': 1229, 'shannon_bits': 3969.2, 'payload_bits': 4001.0, 'stream_bits': 4080.0, ...}
    """
    from slimkit.io.artifact import _to_numpy, codec_chains
    from slimkit.io.codecs import get_codec
    from slimkit.io.entropy import coding_report

    state = model.state_dict()
    out: dict[str, dict[str, float]] = {}
    for key, chain in codec_chains(model).items():
        names = [stage.get("codec") for stage in chain]
        if "huffman" not in names or key not in state:
            continue
        data = _to_numpy(state[key])
        for stage in chain[: names.index("huffman")]:
            options = {k: v for k, v in stage.items() if k != "codec"}
            data, _, _ = get_codec(stage["codec"]).encode(data, **options)
        out[key] = coding_report(np.asarray(data, dtype=np.uint8))
    return out
