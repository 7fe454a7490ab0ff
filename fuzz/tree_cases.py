"""Cases of the structure-aware fuzzer: a seed tree, a few edits, written back to files.

`mutate(seed, rng, vocab)` draws 1-4 edits (`fuzz/tree_docs.py`); `write_case(seed, edits, dest)`
writes the mutated input under `dest` and returns its path: a .slim file (the manifest re-serialised
and re-compressed in the seed's own layout, then the safetensors header edits, so the loader's deeper
checks are reached), a YAML recipe, or a Hugging Face folder.

What the edits do, by kind:
- every tree: a value swapped for another type (bool, float, string, list, mapping, null), an edge
  number (0, -1, 2**31, 2**63, 10**400, NaN, Infinity), a grown / shrunk / scaled number, a string
  from the seeds or a hostile one, a key dropped, an unknown or known key added, a key written twice,
  a list grown to 100,000 entries, 5,000 nested brackets, one subtree copied over another;
- .slim: manifest values (base, edits, codec chains and their parameters, the packed index), the
  safetensors header entries (dtype, shape, data_offsets), the body truncated or extended;
- recipes: also anchors and aliases (an alias bomb), merge keys, YAML tags, 70-digit ints, binary bytes;
- HF configs: also sizes, counts and position limits scaled (layers, hidden sizes, vocab).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import random
import zlib
from pathlib import Path
from typing import Any

from fuzz.tree_docs import DROP, Alias, Anchor, Dup, Raw, apply_edits, get, larger_than, nodes, to_json, to_yaml
from fuzz.tree_seeds import Seed

EDGE_INTS = [0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
             2**64, 10**30, -(2**63)]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1e-45, 1e308, -1e308, math.nan, math.inf, -math.inf]
HOSTILE = ["", "\x1b[31mred\x1b[0m", "[/dim]", "../../../../etc/passwd", "/etc/passwd", "__class__", "forward",
           "0", "-1", "\u202eevil", "x" * 5000, "a.b.c", ".", "..", "*", "re:.*", "<F4", ">f4", "U8", "F64",
           "float64", "complex64", "object", "int4", "nosuch"]
YAML_RAW = [".nan", ".inf", "-.inf", "0x7fffffff", "0o777", "1_000", "yes", "no", "on", "off", "~", "2001-12-14",
            "!!binary aGVsbG8=", '!!python/object/apply:os.system ["true"]', "!!python/name:os.system",
            "!!set {a: null}", "!!omap [{a: 1}]", "!!float 1", "!!int '3'", "!!str 3", "!!null ''",
            "1" * 70, "-" + "9" * 64, "1e400", "!!timestamp 2001-12-14t21:59:43.10-05:00", "? complex key"]
JSON_RAW = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 400, "9" * 5000, "-0", "1.0e+400", '"\\ud800"',
            '"\\u0000"', "[" * 5000 + "]" * 5000, "{" + '"a":' * 0 + "}"]
HF_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
           "vocab_size", "max_position_embeddings", "type_vocab_size", "head_dim", "quantization_config",
           "rope_scaling", "text_config", "architectures", "model_type", "torch_dtype", "tie_word_embeddings",
           "hidden_act", "layer_norm_eps", "rms_norm_eps", "pad_token_id", "num_experts", "n_positions",
           "sliding_window", "auto_map", "rope_theta", "is_decoder", "position_embedding_type", "n_layer"]
RECIPE_KEYS = ["method", "bits", "group_size", "granularity", "sparsity", "targets", "ignore", "coding",
               "ratio", "epochs", "samples", "symmetric", "scope", "rank", "clusters", "max_drop", "stages",
               "models", "requires", "description", "finetune_epochs", "lr", "steps"]
MAX_BYTES = 32 << 20    # a recipe or config larger than this is cut back to the seed plus its first edit


# ---------------------------------------------------------------- .slim files as trees

def split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def parse_slim(name: str, data: bytes) -> Seed:
    """A .slim file as a tree {"manifest", "header", "meta"} and what `write_slim_case` needs."""
    from fuzz.mutate import get_manifest

    header, body = split(data)
    manifest, key = get_manifest(header, body)
    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k != key}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    tree = {"manifest": manifest, "header": entries, "meta": meta}
    return Seed("slim", name, tree, {"key": key, "header": header, "body": body})


def _zdict() -> bytes | None:
    from slimkit.io import layout

    return getattr(layout, "ZDICT", None)


def write_slim_case(seed: Seed, edits: list) -> bytes:
    """The seed file after `edits`: manifest edits first (re-serialised, re-compressed, the packed
    payload re-spliced), then header and metadata edits on the result, then body edits."""
    key, body = seed.extra["key"], seed.extra["body"]
    header = copy.deepcopy(seed.extra["header"])
    tree = apply_edits({"manifest": seed.tree["manifest"]}, [e for e in edits if e[0][0] == "manifest"])
    text = to_json(tree.get("manifest"))
    meta = header.setdefault("__metadata__", {})
    if key == "slimkit.zb":
        payload = header["payload"]
        begin, end = payload["data_offsets"]
        start = end - int(meta[key])
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=_zdict())
        blob = deflate.compress(text.encode("utf-8", "surrogatepass")) + deflate.flush()
        body = body[:start] + blob + body[end:]
        payload["data_offsets"] = [begin, start + len(blob)]
        payload["shape"] = [start + len(blob) - begin]
        meta[key] = str(len(blob))
    elif key == "slimkit.z":
        meta[key] = base64.b64encode(zlib.compress(text.encode("utf-8", "surrogatepass"), 9)).decode()
    else:
        meta[key] = text
    rest = [e for e in edits if e[0][0] in ("header", "meta")]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    other = {k: v for k, v in meta.items() if k != key}
    after = apply_edits({"header": entries, "meta": other}, rest)
    final_meta = after.get("meta")
    if isinstance(final_meta, dict):
        final_meta = {**final_meta, key: meta[key]}
    out = {"__metadata__": final_meta}
    if isinstance(after.get("header"), dict):
        out.update(after["header"])
    elif isinstance(after.get("header"), Dup):
        out = Dup((("__metadata__", final_meta), *after["header"].pairs))
    raw = to_json(out).encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    for path, value in edits:
        if path[0] == "body":
            body = _edit_body(body, value)
    return len(raw).to_bytes(8, "little") + raw + body


def _edit_body(body: bytes, how: tuple) -> bytes:
    op, n = how
    if op == "cut":
        return body[:max(0, len(body) - n)]
    if op == "grow":
        return body + b"\0" * n
    if op == "zero" and body:
        i = n % len(body)
        return body[:i] + b"\0" * min(64, len(body) - i) + body[i + 64:]
    if op == "ones" and body:
        i = n % len(body)
        return body[:i] + b"\xff" * min(64, len(body) - i) + body[i + 64:]
    return body


# ---------------------------------------------------------------- writing a case

def _edited(seed: Seed, edits: list) -> Any:
    """The seed's tree after `edits` (all of them, or the first alone where all would write more than
    MAX_BYTES: two edits can nest a 100,000-entry list in each of 1,000 copies, a 900 MB file whose
    writing alone outlasts the case's time limit)."""
    tree_edits = [e for e in edits if e[0] != ("__bytes__",)]
    tree = apply_edits(seed.tree, tree_edits)
    if larger_than(tree, MAX_BYTES):
        tree = apply_edits(seed.tree, tree_edits[:1])
        if larger_than(tree, MAX_BYTES):
            raise ValueError(f"case larger than {MAX_BYTES >> 20} MB")
    return tree


def write_case(seed: Seed, edits: list, dest: Path) -> Path:
    """Write `seed` after `edits` under folder `dest`; returns the input's path (a file or a folder)."""
    if seed.kind == "slim":
        path = dest / "case.slim"
        path.write_bytes(write_slim_case(seed, edits))
        return path
    tree = _edited(seed, edits)
    if seed.kind == "recipe":
        data = to_yaml(tree).encode("utf-8", "surrogatepass")
        for path, value in edits:
            if path == ("__bytes__",):
                i = value[0] % (len(data) + 1)
                data = data[:i] + value[1] + data[i:]
        path = dest / "case.yaml"
        path.write_bytes(data)
        return path
    folder = dest / "case"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(to_json(tree), encoding="utf-8", errors="surrogatepass")
    (folder / "model.safetensors").write_bytes(seed.extra["weights"])
    return folder


def case_bytes(seed: Seed, edits: list) -> bytes:
    """The mutated input as bytes (for a content hash and a size check)."""
    if seed.kind == "slim":
        return write_slim_case(seed, edits)
    tree = _edited(seed, edits)
    text = to_yaml(tree) if seed.kind == "recipe" else to_json(tree)
    return text.encode("utf-8", "surrogatepass") + repr([e for e in edits if e[0] == ("__bytes__",)]).encode()


# ---------------------------------------------------------------- drawing edits

def vocabulary(seeds: list[Seed]) -> dict[str, dict[str, list]]:
    """Per kind: every key and string value in its seeds (what mutated values are drawn from)."""
    vocab: dict[str, dict[str, set]] = {}
    for seed in seeds:
        v = vocab.setdefault(seed.kind, {"keys": set(), "strings": set(), "lists": set()})
        stack = [seed.tree]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                v["keys"].update(str(k) for k in node)
                stack.extend(node.values())
            elif isinstance(node, list):
                if node and len(node) <= 8 and all(type(x) is int for x in node):
                    v["lists"].add(tuple(node))
                stack.extend(node[:64])
            elif isinstance(node, str) and len(node) <= 80:
                v["strings"].add(node)
    extra = {"slim": HF_KEYS, "hf": HF_KEYS, "recipe": RECIPE_KEYS}
    return {kind: {"keys": sorted(v["keys"] | set(extra.get(kind, []))), "strings": sorted(v["strings"]),
                   "lists": sorted(v["lists"])} for kind, v in vocab.items()}


def _number(rng: random.Random, old: int | float) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(EDGE_INTS)
    if roll < 0.7 and type(old) is int:
        return rng.choice([old + 1, old - 1, old * 2, old // 2, -old, old * 1000, old * 2**20, 10**400,
                           old + 0.5, float(old), True])
    if roll < 0.85:
        return rng.choice(EDGE_FLOATS + [float(old) * 2, -float(old)])
    return rng.choice([str(old), [old], {"value": old}, None, Raw(rng.choice(JSON_RAW[:8]))])


def _any(rng: random.Random, vocab: dict, kind: str) -> Any:
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(EDGE_INTS)
    if roll < 0.3:
        return rng.choice(EDGE_FLOATS)
    if roll < 0.5 and vocab["strings"]:
        return rng.choice(vocab["strings"])
    if roll < 0.6:
        return rng.choice(HOSTILE)
    if roll < 0.7 and vocab["lists"]:
        return list(rng.choice(vocab["lists"]))
    if roll < 0.8:
        return rng.choice([None, True, False, [], {}, [0], {"": 0}])
    if kind == "recipe":
        return Raw(rng.choice(YAML_RAW))
    return Raw(rng.choice(JSON_RAW))


def new_value(rng: random.Random, old: Any, vocab: dict, kind: str) -> Any:
    """A replacement for `old`: mostly of its own kind (an edge number, a changed list), else anything."""
    if rng.random() < 0.2:
        return _any(rng, vocab, kind)
    if isinstance(old, bool):
        return rng.choice([not old, 0, 1, "true", None, 1.0])
    if isinstance(old, int | float):
        return _number(rng, old)
    if isinstance(old, str):
        return rng.choice([*rng.sample(vocab["strings"], min(3, len(vocab["strings"]))), *rng.sample(HOSTILE, 2),
                           old + "x", old[:-1], old.upper(), old * 2, 1, None, [old]])
    if isinstance(old, list):
        if not old:
            return rng.choice([[0], [{}], [""], [None] * 3])
        pick = rng.randrange(8)
        if pick == 0:
            return old + [old[-1]]
        if pick == 1:
            return old[:-1]
        if pick == 2:
            return old[::-1]
        if pick == 3:
            return [copy.deepcopy(old[0])] * rng.choice([1000, 100_000])   # a huge list
        if pick == 4:
            return [_number(rng, v) if type(v) is int else v for v in old]
        if pick == 5:
            return [old]
        if pick == 6 and vocab["lists"]:
            return list(rng.choice(vocab["lists"]))
        return {str(i): v for i, v in enumerate(old[:8])}
    if isinstance(old, dict):
        pick = rng.randrange(6)
        keys = list(old)
        if pick == 0 and keys:
            k = rng.choice(keys)
            return Dup(tuple(old.items()) + ((k, new_value(rng, old[k], vocab, kind)),))   # a key twice
        if pick == 1:
            return {**old, rng.choice(vocab["keys"] + ["unknown", "__proto__"]): _any(rng, vocab, kind)}
        if pick == 2 and keys:
            return {k: v for k, v in old.items() if k != rng.choice(keys)}
        if pick == 3:
            return [old]
        if pick == 4:
            return Raw("[" * 5000 + "]" * 5000) if kind != "recipe" else Raw("[" * 200 + "]" * 200)
        return {k: old for k in ("a", "b")} if keys else {"": {}}
    return _any(rng, vocab, kind)


def _focus(seed: Seed, rng: random.Random) -> tuple:
    """The subtree most edits of a seed go to (its codec chains, header entries, stages, ...)."""
    if seed.kind == "slim":
        roll = rng.random()
        manifest = seed.tree["manifest"]
        if roll < 0.45 and manifest.get("tensors"):
            name = rng.choice(list(manifest["tensors"]))
            return ("manifest", "tensors", name)
        if roll < 0.6:
            return ("manifest", "base")
        if roll < 0.68 and manifest.get("edits"):
            return ("manifest", "edits")
        if roll < 0.78 and manifest.get("packed"):
            return ("manifest", "packed", rng.choice(list(manifest["packed"])))
        if roll < 0.9:
            return ("header",)
        if roll < 0.93:
            return ("meta",)
        return ("manifest",)
    if seed.kind == "recipe" and rng.random() < 0.7 and isinstance(seed.tree, dict) and seed.tree.get("stages"):
        return ("stages", rng.randrange(len(seed.tree["stages"])))
    return ()


def _yaml_special(rng: random.Random, tree: Any) -> list:
    """Edits only YAML can express: anchors and aliases (a bomb), merge keys, bytes that are not text."""
    pick = rng.randrange(4)
    if pick == 0:   # billion laughs, depth 6-9
        depth = rng.randrange(6, 10)
        layers = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        layers += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, depth)]
        return [(("description",), Raw("[" + ", ".join(layers) + "]"))]
    if pick == 1:
        stage = tree["stages"][0] if isinstance(tree, dict) and isinstance(tree.get("stages"), list) and \
            tree["stages"] else {"method": "int8"}
        return [(("stages",), [Anchor("s", stage), Alias("s")])]
    if pick == 2:
        return [(("stages", 0), Dup(((Raw("<<"), Alias("nosuch")), ("method", "int8"))))]
    junk = rng.choice([b"\xff\xfe", b"\x00", b"\x1b[2J", b"\xc3", b"\t", b"\r\n\r\n", b"%YAML 9.9\n---\n"])
    return [(("__bytes__",), (rng.randrange(1 << 16), junk))]


def mutate(seed: Seed, rng: random.Random, vocab: dict) -> list:
    """1-4 edits of `seed`'s tree."""
    edits: list = []
    voc = vocab[seed.kind]
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        if seed.kind == "recipe" and rng.random() < 0.15:
            edits += _yaml_special(rng, seed.tree)
            continue
        if seed.kind == "slim" and rng.random() < 0.05:
            edits.append((("body",), (rng.choice(["cut", "grow", "zero", "ones"]), rng.choice([1, 7, 64, 1 << 12]))))
            continue
        focus = _focus(seed, rng)
        try:
            sub = get(seed.tree, focus)
        except (KeyError, IndexError, TypeError):
            sub, focus = seed.tree, ()
        paths = nodes(sub, focus)
        path = rng.choice(paths)
        if not path:
            continue
        try:
            old = get(seed.tree, path)
        except (KeyError, IndexError, TypeError):
            old = None
        roll = rng.random()
        if roll < 0.1 and len(path) > 1:
            edits.append((path, DROP))
        elif roll < 0.18:   # a subtree copied over another (a shape from another tensor, a chain from another)
            other = rng.choice(nodes(seed.tree))
            edits.append((path, copy.deepcopy(get(seed.tree, other))))
        elif roll < 0.25 and isinstance(old, dict):
            edits.append(((*path, rng.choice(voc["keys"])), _any(rng, voc, seed.kind)))
        else:
            edits.append((path, new_value(rng, old, voc, seed.kind)))
    return edits
