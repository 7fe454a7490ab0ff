"""A structure-aware mutator for .slim files (pure Python, deterministic for a given seed).

Random byte flips rarely get past a checksum-free but *compressed* manifest, so most mutations here
parse the file (8-byte length, safetensors JSON header, manifest in `__metadata__`, plain or
zlib+base64) and change one thing inside: a number becomes an edge value (0, -1, 2**31, 2**63, ...),
a string another codec or dtype name, a key disappears, a list entry is duplicated, a value nests
deeply; then the file is re-serialised (and the manifest re-compressed) so the loader's deeper
checks are reached. The rest are byte-level edits (flip, overwrite, insert, delete, truncate).

>>> from fuzz.mutate import mutate
>>> child = mutate(open("fuzz/corpus/seeds/lenet-300-100-int8", "rb").read(), seed=1)   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import random
import zlib
from typing import Any

INTS = [0, 1, -1, 2, 3, 7, 8, 9, 15, 16, 255, 256, 4096, 65535, 2**31 - 1, 2**31, 2**32, 2**40, 2**53,
        2**63 - 1, 2**63, 2**64, 10**30, -(2**63)]
FLOATS = [0.0, -0.0, 0.5, 1e-45, 1e308, -1e308]
STRINGS = ["", "float32", "float16", "bfloat16", "int8", "uint8", "int64", "bool", "complex64", "object",
           "huffman", "ans", "entropy", "sparse", "palette", "bitpack", "cast", "affine", "nosuchcodec",
           "mask", "gaps", "hf", "zoo", "user", "weights", "lenet5", "lenet-300-100", "replace", "setattr",
           "U8", "F32", "I64", "BOOL", "fc1.weight", "fc1", "payload", "data", "0.codebook", "__class__",
           "Sequential", "Linear", "Int8Linear", "x" * 300]
MAX_DEPTH_BOMB = 5000
DEEP = "deeply-nested:"


def split_file(data: bytes) -> tuple[dict, bytes] | None:
    """(safetensors header as a dict, the bytes after it), or None if `data` does not parse."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > len(data) - 8:
        return None
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        return None
    return (header, data[8 + n:]) if isinstance(header, dict) else None


def dumps(tree: Any) -> str:
    """Compact JSON; the marker strings `DEEP<n>` become arrays nested `n` deep (past any recursion limit)."""
    text = json.dumps(tree, separators=(",", ":"))
    for depth in (10, 100, MAX_DEPTH_BOMB):
        text = text.replace(f'"{DEEP}{depth}"', "[" * depth + "0" + "]" * depth)
    return text


def join_file(header: dict, body: bytes, pad: bool = True) -> bytes:
    raw = dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


def _zdict() -> bytes | None:
    from slimkit.io import layout

    return getattr(layout, "ZDICT", None)


def _tail(header: dict, body: bytes) -> tuple[int, int] | None:
    """(start, end) in `body` of a tail manifest (layout key "slimkit.zb": the payload's last N bytes)."""
    meta, entry = header.get("__metadata__"), header.get("payload")
    try:
        n = int(meta["slimkit.zb"])
        end = int(entry["data_offsets"][1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return (end - n, end) if 0 < n <= end <= len(body) else None


def get_manifest(header: dict, body: bytes = b"") -> tuple[Any, str] | None:
    """The manifest (parsed JSON) and the metadata key it came from."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        return None
    try:
        if isinstance(meta.get("slimkit"), str):
            return json.loads(meta["slimkit"]), "slimkit"
        if isinstance(meta.get("slimkit.z"), str):
            return json.loads(zlib.decompress(base64.b64decode(meta["slimkit.z"]))), "slimkit.z"
        span, zdict = _tail(header, body), _zdict()
        if span is not None and zdict is not None:
            inflater = zlib.decompressobj(-15, zdict=zdict)
            return json.loads(inflater.decompress(body[span[0]:span[1]])), "slimkit.zb"
    except (ValueError, zlib.error, RecursionError):
        return None
    return None


def put_manifest(header: dict, manifest: Any, key: str, body: bytes = b"") -> bytes:
    """Store `manifest` back under `key`; returns the (possibly changed) body."""
    text = dumps(manifest)
    if key == "slimkit.zb":
        start, end = _tail(header, body)
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=_zdict())
        blob = deflate.compress(text.encode()) + deflate.flush()
        body = body[:start] + blob + body[end:]
        begin = header["payload"]["data_offsets"][0]
        header["payload"]["data_offsets"][1] = start + len(blob)
        header["payload"]["shape"] = [start + len(blob) - begin]
        header["__metadata__"][key] = str(len(blob))
        return body
    if key == "slimkit.z":
        text = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    header["__metadata__"][key] = text
    return body


def _nodes(tree: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every node of a JSON tree (breadth-limited)."""
    out = [path]
    if isinstance(tree, dict):
        for k, v in list(tree.items())[:200]:
            out.extend(_nodes(v, (*path, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:64]):
            out.extend(_nodes(v, (*path, i)))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def _new_value(rng: random.Random, old: Any) -> Any:
    roll = rng.random()
    if isinstance(old, bool) or roll < 0.05:
        return rng.choice([True, False, None, {}, [], "", 0])
    if isinstance(old, int) and roll < 0.7:
        return rng.choice([*INTS, old + 1, old - 1, old * 2, old // 2, -old])
    if isinstance(old, float) and roll < 0.7:
        return rng.choice([*FLOATS, old * 2, -old])
    if isinstance(old, str) and roll < 0.7:
        return rng.choice([*STRINGS, old + "x", old[:-1], old.upper()])
    if isinstance(old, list) and roll < 0.7:
        if not old:
            return [rng.choice(INTS)]
        pick = rng.random()
        if pick < 0.3:
            return old + [old[rng.randrange(len(old))]]
        if pick < 0.5:
            return old[:-1]
        if pick < 0.7:
            return old[::-1]
        return [rng.choice(INTS) if isinstance(v, int) else v for v in old]
    if isinstance(old, dict) and roll < 0.7 and old:
        copy = dict(old)
        key = rng.choice(list(copy))
        if rng.random() < 0.5:
            del copy[key]
        else:
            copy[key + rng.choice(["x", "::0.codebook", ".weight", "::1.scale"])] = copy[key]
        return copy
    if roll < 0.75:
        return [rng.choice(INTS) for _ in range(rng.randrange(4))]
    if roll < 0.8:
        return f"{DEEP}{rng.choice([10, 100, MAX_DEPTH_BOMB])}"   # expanded by `dumps`
    return rng.choice([*INTS, *FLOATS, *STRINGS, None])


def mutate_tree(tree: Any, rng: random.Random) -> Any:
    """One random change somewhere in a JSON tree (returns the new tree)."""
    paths = _nodes(tree)
    path = rng.choice(paths)
    return _set(tree, path, _new_value(rng, _get(tree, path)))


def mutate_structure(data: bytes, rng: random.Random) -> bytes | None:
    """Change the manifest, a header entry or the payload of a parseable file; None if it does not parse."""
    parts = split_file(data)
    if parts is None:
        return None
    header, body = parts
    found = get_manifest(header, body)
    roll = rng.random()
    if found is not None and roll < 0.6:
        manifest, key = found
        manifest = mutate_tree(manifest, rng)
        if rng.random() < 0.1 and isinstance(manifest, dict) and isinstance(manifest.get("tensors"), dict):
            entries = manifest["tensors"]      # many copies of one entry: a decode-amplification attempt
            if entries:
                name = rng.choice(list(entries))
                for i in range(rng.choice([10, 1000])):
                    entries[f"{name}.{i}"] = entries[name]
        body = put_manifest(header, manifest, key, body)
    elif roll < 0.85:
        header = {k: v for k, v in header.items()}
        meta = header.pop("__metadata__", None)
        header = mutate_tree(header, rng) if header else header
        if isinstance(header, dict) and meta is not None:
            header["__metadata__"] = meta
        if not isinstance(header, dict):
            header = {"__metadata__": meta}
    else:
        body = mutate_bytes(body, rng) if body else body
    return join_file(header, body, pad=rng.random() < 0.9)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """A byte-level edit: flip a bit, overwrite, insert, delete, duplicate or truncate."""
    buf = bytearray(data)
    if not buf:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    op = rng.randrange(6)
    i = rng.randrange(len(buf))
    if op == 0:
        buf[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        buf[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif op == 2:
        buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif op == 3:
        del buf[i:i + rng.randrange(1, 65)]
    elif op == 4:
        j = rng.randrange(len(buf))
        buf[i:i] = buf[j:j + rng.randrange(1, 65)]
    else:
        del buf[i:]
    return bytes(buf)


def mutate(data: bytes, seed: int, max_size: int = 1 << 20) -> bytes:
    """1-3 stacked mutations of `data` (mostly structure-aware), at most `max_size` bytes."""
    rng = random.Random(seed)
    out = data
    for _ in range(rng.choice([1, 1, 2, 3])):
        try:
            child = mutate_structure(out, rng) if rng.random() < 0.75 else None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError, zlib.error):
            child = None  # a previous mutation made the file unparseable for the structured path
        out = child if child is not None else mutate_bytes(out, rng)
    return out[:max_size]
