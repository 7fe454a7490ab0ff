"""The `sparse` codec: store only the nonzero values, plus where they are.

The stage's output ("data") is the nonzero values in row-major order of their positions, in the
tensor's own dtype, so later stages (a k-means `palette`, an entropy coder, a `cast`) work on the
values alone. Positions go into one side array, whichever is smaller:

- ``mask``: a bitmask of the whole tensor, one bit per element (``np.packbits``, little-endian);
- ``gaps``: the run of zeros before each nonzero, as symbols of `gap_bits` bits (2..8) with an
  escape: the largest symbol ``2**bits - 1`` means "add that much and keep reading", so a gap ``g``
  is ``g // esc`` escapes and then ``g % esc``. With 8 bits the stream is plain uint8 symbols that
  an entropy coder can take as they are (`gaps_to_symbols` / `symbols_to_positions`). The gap
  symbols are either bit-packed or entropy-coded (`gap_coder` = "huffman" or "ans" in the params,
  Deep Compression's coding of index differences), whichever is smaller;
- ``nm``: when every group of `m` consecutive elements holds exactly `n` nonzeros (2:4, 1:4, 2:8,
  ...), each group's pattern number, packed in base C(m, n) (2.59 bits per 2:4 group instead of a
  mask's 4) or entropy-coded, whichever is smaller (`slimkit.io.codec_nm`); params ``"nm": [n, m]``.

``index="auto"`` (the default) detects N:M structure and keeps the smallest of all of these.

>>> stored, stages = encode_chain(weight, [{"codec": "sparse"}])
>>> stored["data"]          # the nonzero values, float32
>>> stages[0]["index"]      # "mask" or "gaps"
"""

from __future__ import annotations

import math

import numpy as np

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.codec_entropy import best_entropy_code, entropy_decode
from slimkit.io.codec_nm import decode_nm, nm_structure, pack_ranks, pattern_ranks, ranks_to_positions, valid_nm
from slimkit.io.codecs import Codec, _dtype, _shape, pack_bits, register_codec, unpack_bits

INDEX_KINDS = ("auto", "mask", "gaps", "nm")
GAP_BITS = range(2, 9)
Option = tuple[int, str, np.ndarray, int, "str | None"]   # (bytes, index kind, side array, gap bits, coder)


def gaps_to_symbols(positions: np.ndarray, bits: int = 8) -> np.ndarray:
    """Sorted flat positions -> uint8 gap symbols (escape = ``2**bits - 1``).

    >>> gaps_to_symbols(np.array([0, 3, 300]), 8).tolist()
    [0, 2, 255, 41]
    """
    esc = (1 << bits) - 1
    pos = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(pos, prepend=-1) - 1
    if gaps.size and gaps.min() < 0:
        raise ValueError("positions must be strictly increasing")
    escapes = gaps // esc
    counts = escapes + 1
    total = int(counts.sum())
    out = np.full(total, esc, dtype=np.uint8)
    ends = np.cumsum(counts) - 1          # the final (literal) symbol of each gap
    out[ends] = (gaps % esc).astype(np.uint8)
    return out


def symbols_to_positions(symbols: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Inverse of `gaps_to_symbols`; raises SlimFormatError if the stream is malformed for `size`."""
    esc = (1 << bits) - 1
    sym = np.asarray(symbols).astype(np.int64)
    if sym.size and sym.max() > esc:
        raise SlimFormatError(f"sparse: gap symbol {int(sym.max())} exceeds {esc} for {bits} bits")
    if sym.size and sym[-1] == esc:
        raise SlimFormatError("sparse: gap stream ends inside an escape")
    # each symbol advances by its value; a literal also consumes the nonzero itself (+1)
    literal = sym != esc
    steps = sym + literal
    positions = np.cumsum(steps)[literal] - 1
    if positions.size and positions[-1] >= size:
        raise SlimFormatError(f"sparse: position {int(positions[-1])} outside a tensor of {size} elements")
    return positions


@register_codec
class Sparse(Codec):
    """Nonzero values as data; a bitmask or gap-coded positions as the side array."""

    name = "sparse"

    def encode(self, data, index: str = "auto", gap_bits: int | None = None, entropy: bool = True, **_):
        if index not in INDEX_KINDS:
            raise SlimError(f"sparse: index must be one of {', '.join(INDEX_KINDS)}, got {index!r}")
        if gap_bits is not None and gap_bits not in GAP_BITS:
            raise SlimError(f"sparse: gap_bits must be an int in 2..8, got {gap_bits!r}")
        arr = np.asarray(data)
        flat = np.ascontiguousarray(arr).reshape(-1)
        nonzero = flat != 0
        positions = np.flatnonzero(nonzero)
        values = flat[positions]
        mask = np.packbits(nonzero, bitorder="little")
        options: list[Option] = []
        # an all-zero tensor always keeps the mask: its size bounds the decoded size honestly
        if index in ("auto", "mask") or not positions.size:
            options.append((mask.size, "mask", mask, 0, None))
        if positions.size and index in ("auto", "gaps"):
            for bits in ([gap_bits] if gap_bits else GAP_BITS):
                symbols = gaps_to_symbols(positions, bits)
                packed = pack_bits(symbols, bits)
                options.append((packed.size, "gaps", packed, bits, None))
                if entropy:
                    stream, coder = best_entropy_code(symbols)
                    options.append((stream.size, "gaps", stream, bits, coder))
        nm = nm_structure(nonzero) if positions.size and index in ("auto", "nm") else None
        if index == "nm" and nm is None and positions.size:
            raise SlimError(f"sparse: index 'nm' needs exactly n nonzeros in every group of m, not so for "
                            f"a tensor of shape {list(arr.shape)}")
        if nm is not None:
            options.extend(_nm_options(nonzero, *nm, entropy))
        _, kind, side, bits, coder = min(options, key=lambda o: o[0])
        params = {"shape": list(arr.shape), "dtype": str(arr.dtype), "nnz": int(positions.size),
                  "index": kind}
        if kind == "nm":
            params["nm"] = list(nm)
            if coder:
                params["nm_coder"] = coder
        if kind == "gaps":
            params.update(gap_bits=bits, symbols=int(gaps_to_symbols(positions, bits).size))
            if coder:
                params["gap_coder"] = coder
        return values, {kind: side}, params

    def side_keys(self, params):
        return (params.get("index"),)

    def decode(self, data, side, params):
        shape = _shape(params, "sparse")
        dtype = _dtype(params, "sparse")
        size = math.prod(shape)
        nnz, kind = params.get("nnz"), params.get("index")
        if not isinstance(nnz, int) or not 0 <= nnz <= size:
            raise SlimFormatError(f"sparse: nnz {nnz!r} impossible for a tensor of {size} elements")
        if data.ndim != 1 or data.size != nnz:
            raise SlimFormatError(f"sparse: {data.size} stored values, manifest says {nnz}")
        if kind not in ("mask", "gaps", "nm") or kind not in side:
            raise SlimFormatError(f"sparse: missing or unknown index kind {kind!r}")
        stream = side[kind]
        if stream.dtype != np.uint8 or stream.ndim != 1:
            raise SlimFormatError("sparse: the index must be a 1-D uint8 array")
        if kind == "mask":
            if stream.size != (size + 7) // 8:
                raise SlimFormatError(f"sparse: bitmask of {stream.size} bytes for {size} elements")
            bits_set = np.unpackbits(stream, bitorder="little", count=size).astype(bool)
            if int(bits_set.sum()) != nnz:
                raise SlimFormatError(f"sparse: bitmask has {int(bits_set.sum())} bits set, expected {nnz}")
            positions = np.flatnonzero(bits_set)
        elif kind == "nm":
            positions = _nm_positions(stream, params, size, nnz)
        else:
            bits, count = params.get("gap_bits"), params.get("symbols")
            if bits not in GAP_BITS or not isinstance(count, int) or count < nnz:
                raise SlimFormatError(f"sparse: bad gap parameters (gap_bits={bits!r}, symbols={count!r})")
            if count > size + nnz:
                raise SlimFormatError(f"sparse: {count} gap symbols for a tensor of {size} elements")
            if "gap_coder" in params:
                symbols = entropy_decode(stream, count, params["gap_coder"])
            elif stream.size != (count * bits + 7) // 8:
                raise SlimFormatError(f"sparse: {stream.size} bytes cannot hold {count} gap symbols")
            else:
                symbols = unpack_bits(stream, bits, count)
            positions = symbols_to_positions(symbols, bits, size)
            if positions.size != nnz:
                raise SlimFormatError(f"sparse: gap stream gives {positions.size} positions, expected {nnz}")
        out = np.zeros(size, dtype=dtype)
        out[positions] = data.astype(dtype, copy=False)
        return out.reshape(shape)


def _nm_options(nonzero: np.ndarray, n: int, m: int, entropy: bool) -> list[Option]:
    """The packed pattern stream, and (up to 256 patterns) the entropy-coded pattern numbers."""
    options: list[Option] = []
    ranks = pattern_ranks(nonzero, n, m)
    packed = pack_ranks(ranks, n, m)
    options.append((packed.size, "nm", packed, 0, None))
    if entropy and math.comb(m, n) <= 256:
        stream, coder = best_entropy_code(ranks.astype(np.uint8))
        options.append((stream.size, "nm", stream, 0, coder))
    return options


def _nm_positions(stream: np.ndarray, params: dict, size: int, nnz: int) -> np.ndarray:
    """Positions from an ``nm`` index, every count checked against the manifest before decoding."""
    nm = params.get("nm")
    if not (isinstance(nm, list) and len(nm) == 2 and valid_nm(*nm)) or size % nm[1]:
        raise SlimFormatError(f"sparse: bad nm parameters {str(nm)[:40]} for a tensor of {size} elements")
    n, m = nm
    if nnz != size // m * n:
        raise SlimFormatError(f"sparse: {n}:{m} groups of a tensor of {size} elements hold {size // m * n} "
                              f"nonzeros, manifest says {nnz}")
    if "nm_coder" not in params:
        return decode_nm(stream, n, m, size)
    if math.comb(m, n) > 256:
        raise SlimFormatError(f"sparse: entropy-coded nm index needs at most 256 patterns, {n}:{m} has more")
    return ranks_to_positions(entropy_decode(stream, size // m, params["nm_coder"]), n, m)
