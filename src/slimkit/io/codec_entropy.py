"""Entropy codecs for uint8 symbol arrays (e.g. palette indices): `huffman` (canonical Huffman),
and `entropy`, which codes with Huffman and with ANS (`slimkit.io.codec_ans`) and keeps the smaller
stream (ANS is within a fraction of a percent of the Shannon bound on long streams; Huffman's
4-bit-per-symbol table is cheaper on short ones).

>>> chain = [{"codec": "palette", "bits": 5}, {"codec": "entropy"}]
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.artifact import _to_numpy, codec_chains
from slimkit.io.codec_ans import ans_decode, ans_encode, ans_header_bytes
from slimkit.io.codecs import Codec, _dtype, _shape, get_codec, register_codec
from slimkit.io.entropy import coding_report, decode_symbols, encode_symbols

CODERS = ("huffman", "ans")


def best_entropy_code(symbols: np.ndarray) -> tuple[np.ndarray, str]:
    """The smaller of the Huffman and the ANS stream of `symbols`, and which coder made it.

    >>> stream, coder = best_entropy_code(np.array([0, 0, 1, 0], np.uint8))
    >>> entropy_decode(stream, 4, coder).tolist()
    [0, 0, 1, 0]
    """
    streams = [(encode_symbols(symbols), "huffman"), (ans_encode(symbols), "ans")]
    return min(streams, key=lambda s: s[0].size)


def entropy_decode(stream: np.ndarray, count: int, coder: object) -> np.ndarray:
    """Decode a stream written by `best_entropy_code` (SlimFormatError if anything is off)."""
    if coder == "huffman":
        return decode_symbols(stream, count)
    if coder == "ans":
        return ans_decode(stream, count)
    raise SlimFormatError(f"entropy: unknown coder {coder!r} (known: {', '.join(CODERS)})")


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


@register_codec
class Entropy(Codec):
    """uint8 symbols -> the smaller of a Huffman and an ANS stream (the choice is in the params)."""

    name = "entropy"

    def encode(self, data, **_):
        arr = np.asarray(data)
        if arr.dtype != np.uint8:
            raise SlimError(f"entropy: expects uint8 symbols (e.g. after palette), got {arr.dtype}")
        stream, coder = best_entropy_code(arr.reshape(-1))
        return stream, {}, {"shape": list(arr.shape), "coder": coder}

    def decode(self, data, side, params):
        shape = _shape(params, "entropy")
        if data.dtype != np.uint8 or data.ndim != 1:
            raise SlimFormatError("entropy: the stream must be a 1-D uint8 array")
        return entropy_decode(data, math.prod(shape), params.get("coder")).reshape(shape)


ENTROPY_CODECS = ("huffman", "ans", "entropy")


def entropy_report(model) -> dict[str, dict[str, float]]:
    """For each tensor stored through an entropy stage: coded bits beside the Shannon bound.

    `payload_bits`/`stream_bits`/`overhead` are Huffman's (payload over the bound); `ans_bits` is
    the whole ANS stream (header included) and `ans_payload_overhead` its payload over the bound.

    >>> entropy_report(model)["fc1.weight"]
    {'symbols': 1229, 'shannon_bits': 3969.2, 'payload_bits': 4001.0, 'stream_bits': 4080.0, ...}
    """

    state = model.state_dict()
    out: dict[str, dict[str, float]] = {}
    for key, chain in codec_chains(model).items():
        names = [stage.get("codec") for stage in chain]
        at = next((i for i, n in enumerate(names) if n in ENTROPY_CODECS), None)
        if at is None or key not in state:
            continue
        data = _to_numpy(state[key])
        for stage in chain[:at]:
            options = {k: v for k, v in stage.items() if k != "codec"}
            data, _, _ = get_codec(stage["codec"]).encode(data, **options)
        symbols = np.asarray(data, dtype=np.uint8).reshape(-1)
        report = coding_report(symbols)
        ans = ans_encode(symbols)
        header = 8 * ans_header_bytes(ans)
        report["ans_bits"] = float(8 * ans.size)
        report["ans_payload_overhead"] = ((8 * ans.size - header) / report["shannon_bits"] - 1.0
                                          if report["shannon_bits"] else 0.0)
        report["coder"] = names[at] if names[at] != "entropy" else best_entropy_code(symbols)[1]
        out[key] = report
    return out
