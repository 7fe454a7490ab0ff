"""Reading a recipe's YAML without trusting it: bounded, alias-free, no duplicate keys.

A recipe is a handful of lines, so anything a hostile file could use to make the loader hang or
allocate is refused before it is built, each with a one-line `ConfigError` naming the file and line:

- more than `MAX_BYTES` bytes, text that is not UTF-8, or control characters;
- aliases (`*name`): an "alias bomb" (billion laughs) expands a few hundred bytes into billions of
  nodes, and recipes never need one (anchors alone are harmless and allowed);
- more than `MAX_NODES` nodes or nesting deeper than `MAX_DEPTH`;
- a key given twice in one mapping (YAML would silently keep the last);
- an integer literal of more than `MAX_INT_DIGITS` digits.

>>> doc, lines = read_recipe_yaml(Path("my-recipe.yaml"))
>>> lines[(0, "bits")]          # 1-based line of stage 1's `bits` key
6
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slimkit.core.errors import ConfigError
from slimkit.core.text import clean

MAX_BYTES = 1 << 20       # 1 MiB: the largest shipped recipe is under 1 KB
MAX_NODES = 100_000       # scalars, lists and mappings in the whole document
MAX_DEPTH = 64            # lists and mappings nested in each other
MAX_INT_DIGITS = 64       # an int literal longer than this is a typo or an attack

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Loader):  # type: ignore[misc, valid-type]
    """SafeLoader that refuses duplicate keys and absurdly long integers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeConstructor reports it
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _Refused(line, f"duplicate key {clean(key)!r} (first given on line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise _Refused(node.start_mark.line + 1, f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


class _Refused(Exception):
    def __init__(self, line: int, why: str):
        super().__init__(why)
        self.line, self.why = line, why


def read_text(path: Path) -> str:
    """The text of a recipe file: at most `MAX_BYTES`, UTF-8, no control characters but tab/newline."""
    where = clean(str(path))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the recipe ({clean(exc.strerror or exc)})") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{where}: a recipe file may be at most {MAX_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not a text recipe (byte {exc.start} is not UTF-8)") from None
    bad = next((i for i, c in enumerate(text) if (ord(c) < 32 and c not in "\t\n\r") or c == "\x7f"), None)
    if bad is not None:
        line = text.count("\n", 0, bad) + 1
        raise ConfigError(f"{where}:{line}: control character {text[bad]!r} in a recipe")
    return text.removeprefix("\ufeff")


def check_events(text: str, where: str) -> None:
    """Refuse aliases, more than `MAX_NODES` nodes and nesting deeper than `MAX_DEPTH`, from the
    parser's events, before any node or object is built."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"{where}:{line}: YAML aliases (*{clean(event.anchor)}) are not allowed in a recipe; "
                              "write the value out")
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_NODES:
                raise ConfigError(f"{where}:{line}: more than {MAX_NODES:,} YAML nodes in a recipe")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}:{line}: lists or mappings nested deeper than {MAX_DEPTH}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_yaml(text: str, where: str) -> Any:
    """One YAML document from `text` under the rules above; errors name `where` and the line."""
    where = clean(where)
    try:
        check_events(text, where)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError:
        raise
    except _Refused as exc:
        raise ConfigError(f"{where}:{exc.line}: {exc.why}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark else ":"
        why = clean(getattr(exc, "problem", None) or exc)
        raise ConfigError(f"{where}{line} is not valid YAML ({why})") from None
    except (ValueError, RecursionError) as exc:  # a value the constructor cannot build
        raise ConfigError(f"{where}: not a valid recipe ({clean(exc)})") from None


def stage_lines(text: str) -> dict[tuple[int, str], int]:
    """(stage index, key) -> 1-based line of that key in the YAML text ("" = the stage itself).
    Call after `load_yaml` accepted `text` (no aliases, bounded size)."""
    out: dict[tuple[int, str], int] = {}
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return out
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        if key.value == "stages" and isinstance(value, yaml.SequenceNode):
            for i, stage in enumerate(value.value):
                out[(i, "")] = stage.start_mark.line + 1
                if isinstance(stage, yaml.MappingNode):
                    for k, _ in stage.value:
                        out[(i, str(k.value))] = k.start_mark.line + 1
    return out


def read_recipe_yaml(path: Path) -> tuple[Any, dict[tuple[int, str], int]]:
    """(document, stage key lines) of a recipe file, refused with a one-line `ConfigError` if hostile."""
    text = read_text(path)
    return load_yaml(text, str(path)), stage_lines(text)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(doc: Any) -> str:
    """`doc` as YAML that `load_yaml` reads back: never an alias, keys in insertion order."""
    return yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)
