"""Documents as trees for the structure-aware fuzzer (`fuzz/tree_fuzz.py`): values, edits, writers.

A case is a seed document plus a list of edits `(path, value)`; `value` is `DROP` to delete the key.
Besides JSON values a tree may hold nodes that plain JSON or YAML writers cannot produce:

- `Dup(pairs)`: a mapping written with the same key twice (the reader keeps the first or the last);
- `Raw(text)`: text written as-is (`NaN`, `1e999`, 5,000 nested brackets, a YAML tag or alias);
- `Anchor(name, value)` / `Alias(name)`: a YAML anchor and a reference to it (alias bombs).

`to_json` and `to_yaml` (flow style, which is YAML 1.1) write them; edits are applied to a deep copy,
so a seed is parsed once and every case starts from it.

>>> from fuzz.tree_docs import apply_edits, to_json, DROP
>>> to_json(apply_edits({"a": {"b": 1}}, [(("a", "b"), DROP), (("a", "c"), [1, 2])]))
'{"a":{"c":[1,2]}}'
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Raw:
    text: str


@dataclass(frozen=True)
class Dup:
    pairs: tuple


@dataclass(frozen=True)
class Anchor:
    name: str
    value: Any


@dataclass(frozen=True)
class Alias:
    name: str


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()
Path = tuple
Edit = tuple  # (path, value)


def nodes(tree: Any, path: Path = (), limit: int = 400) -> list[Path]:
    """Paths to the nodes of `tree` (dicts and lists; at most `limit`, lists sampled at 32 entries)."""
    out = [path]
    stack = [(tree, path)]
    while stack and len(out) < limit:
        node, at = stack.pop()
        if isinstance(node, dict):
            children = list(node.items())[:200]
        elif isinstance(node, list):
            children = list(enumerate(node[:32]))
        else:
            continue
        for key, child in children:
            out.append((*at, key))
            stack.append((child, (*at, key)))
    return out[:limit]


def get(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def apply_edits(tree: Any, edits: list[Edit]) -> Any:
    """A copy of `tree` with `edits` applied in order; an edit whose path no longer exists is skipped."""
    tree = copy.deepcopy(tree)
    for path, value in edits:
        value = value if value is DROP else copy.deepcopy(value)   # an edit's value may share the seed's nodes
        if not path:
            tree = value
            continue
        try:
            parent = get(tree, path[:-1])
            key = path[-1]
            if value is DROP:
                if isinstance(parent, dict):
                    parent.pop(key, None)
                elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
                    del parent[key]
            elif isinstance(parent, dict):
                parent[key] = value
            elif isinstance(parent, list) and isinstance(key, int):
                if key < len(parent):
                    parent[key] = value
                else:
                    parent.append(value)
        except (KeyError, IndexError, TypeError):
            continue
    return tree


def larger_than(tree: Any, limit: int) -> bool:
    """Whether `tree` written out would take more than about `limit` bytes (stops counting there: a
    list of 1,000 references to one node holding 100,000 entries is 10**8 nodes written, not 10**5)."""
    size, stack = 0, [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Anchor):
            node = node.value
        if isinstance(node, dict | Dup):
            pairs = node.items() if isinstance(node, dict) else node.pairs
            size += 2 + sum(len(str(k)) + 4 for k, _ in pairs)
            stack.extend(v for _, v in pairs)
        elif isinstance(node, list | tuple):
            size += 2 + len(node)
            stack.extend(node)
        else:
            size += len(node.text) if isinstance(node, Raw) else len(str(node)) + 2
        if size > limit:
            return True
    return False


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def to_json(tree: Any) -> str:
    """Compact JSON of `tree`, with `Dup` keys repeated and `Raw` text verbatim (may be invalid JSON)."""
    parts: list[str] = []
    _json(tree, parts)
    return "".join(parts)


def _json(node: Any, out: list[str]) -> None:
    if isinstance(node, Raw):
        out.append(node.text)
    elif isinstance(node, Anchor):
        _json(node.value, out)
    elif isinstance(node, Alias):
        out.append("null")
    elif isinstance(node, dict | Dup):
        pairs = node.items() if isinstance(node, dict) else node.pairs
        out.append("{")
        for i, (k, v) in enumerate(pairs):
            out.append("," if i else "")
            out.append(json.dumps(str(k)) + ":")
            _json(v, out)
        out.append("}")
    elif isinstance(node, list | tuple):
        out.append("[")
        for i, v in enumerate(node):
            out.append("," if i else "")
            _json(v, out)
        out.append("]")
    elif node is None:
        out.append("null")
    elif isinstance(node, bool | int | float):
        out.append(_number(node))
    else:
        out.append(json.dumps(str(node)))


def to_yaml(tree: Any) -> str:
    """`tree` as one line of flow-style YAML (anchors, aliases, tags and repeated keys as written)."""
    parts: list[str] = []
    _yaml(tree, parts)
    return "".join(parts) + "\n"


def _yaml(node: Any, out: list[str]) -> None:
    if isinstance(node, Raw):
        out.append(node.text)
    elif isinstance(node, Anchor):
        out.append(f"&{node.name} ")
        _yaml(node.value, out)
    elif isinstance(node, Alias):
        out.append(f"*{node.name}")
    elif isinstance(node, dict | Dup):
        pairs = node.items() if isinstance(node, dict) else node.pairs
        out.append("{")
        for i, (k, v) in enumerate(pairs):
            out.append(", " if i else "")
            _yaml(k, out) if isinstance(k, Raw) else out.append(json.dumps(str(k)))
            out.append(": ")
            _yaml(v, out)
        out.append("}")
    elif isinstance(node, list | tuple):
        out.append("[")
        for i, v in enumerate(node):
            out.append(", " if i else "")
            _yaml(v, out)
        out.append("]")
    elif node is None:
        out.append("null")
    elif isinstance(node, bool):
        out.append("true" if node else "false")
    elif isinstance(node, float):
        out.append(".nan" if math.isnan(node) else (".inf" if node > 0 else "-.inf") if math.isinf(node)
                   else repr(node))
    elif isinstance(node, int):
        out.append(str(node))
    else:
        out.append(json.dumps(str(node)))


def plain(node: Any) -> Any:
    """`node` as plain JSON data (for a readable record of an edit)."""
    if isinstance(node, Raw):
        return {"raw": node.text[:200] + ("..." if len(node.text) > 200 else "")}
    if isinstance(node, Dup):
        return {"dup": [[str(k), plain(v)] for k, v in node.pairs[:20]]}
    if isinstance(node, Anchor):
        return {"anchor": node.name, "value": plain(node.value)}
    if isinstance(node, Alias):
        return {"alias": node.name}
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in list(node.items())[:50]}
    if isinstance(node, list | tuple):
        return [plain(v) for v in node[:20]] + (["..."] if len(node) > 20 else [])
    if node is DROP:
        return "<dropped>"
    if isinstance(node, float) and not math.isfinite(node):
        return str(node)
    return node
