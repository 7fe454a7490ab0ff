"""Which files hold a safetensors checkpoint: one `.safetensors` file, a sharded Hugging Face
checkpoint (`model.safetensors.index.json` and its shards), or a folder holding either; and the
whole checkpoint read into memory through `SafetensorsReader` (pread, never a memory map).

The index json is validated before any shard is opened: its `weight_map` maps tensor names to
shard files, and every shard lies in the index's own folder (an index cannot point reading at
another folder). `slimkit.stream.checkpoint` reads the same files block by block; a Hugging Face
folder loaded in memory (`slimkit.zoo.hf.pretrained`) reads them with `read_state_dict`.

>>> paths, names, source = checkpoint_files("path/to/llama-folder")   # doctest: +SKIP
>>> state = read_state_dict("path/to/llama-folder")                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.safetensors_file import SafetensorsReader

INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "model.safetensors"


def checkpoint_files(path: str | os.PathLike) -> tuple[list[Path], dict[str, int] | None, str]:
    """(shard files, tensor name -> index of its shard or None for a single file, the file named)
    of a `.safetensors` file, an index json, or a folder holding `model.safetensors.index.json` or
    `model.safetensors`; SlimError naming what is missing, SlimFormatError for a broken index."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            path = path / INDEX_NAME
        elif (path / WEIGHTS_NAME).is_file():
            path = path / WEIGHTS_NAME
        else:
            raise SlimError(f"{path}: no {INDEX_NAME} or {WEIGHTS_NAME} in this folder")
    if not path.is_file():
        raise SlimError(f"no such checkpoint: {path}")
    if not path.name.endswith(".json"):
        return [path], None, str(path)
    return *_index(path), str(path)


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether `path` is a sharded checkpoint: an index json or a folder holding one."""
    path = Path(path)
    return (path.is_dir() and (path / INDEX_NAME).is_file()) or (path.is_file() and path.name.endswith(".index.json"))


def _index(index: Path) -> tuple[list[Path], dict[str, int]]:
    try:
        doc = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SlimFormatError(f"{index}: not a valid index json ({exc.__class__.__name__})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise SlimFormatError(f"{index}: 'weight_map' must map tensor names to shard files")
    files = sorted(set(weight_map.values()))
    folder = index.parent.resolve()
    paths = []
    for name in files:
        p = (folder / name).resolve()
        if p.parent != folder:
            raise SlimFormatError(f"{index}: shard {name!r} lies outside the checkpoint folder")
        if not p.is_file():
            first = next(k for k, v in weight_map.items() if v == name)
            raise SlimError(f"{index}: shard {name} is missing (needed for {first!r})")
        paths.append(p)
    order = {name: i for i, name in enumerate(files)}
    return paths, {k: order[v] for k, v in weight_map.items()}


def missing_in_shards(names: dict[str, int], found: set[str], paths: list[Path], source: str) -> None:
    """SlimFormatError if a tensor of the index is not in the shard the index names for it."""
    missing = sorted(set(names) - found)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SlimFormatError(f"{source}: tensor {missing[0]!r} is not in its shard {paths[names[missing[0]]].name}"
                              f"{more}")


def read_state_dict(path: str | os.PathLike) -> dict:
    """Every tensor of the checkpoint at `path` (see `checkpoint_files`) as torch tensors of their
    own memory, read with pread (`SafetensorsReader`): a shard truncated or rewritten meanwhile is a
    one-line SlimFormatError, never SIGBUS, never zeros. With an index, only the tensors it maps to
    each shard are taken, and every one of them must be there."""
    paths, names, source = checkpoint_files(path)
    state: dict = {}
    for i, shard in enumerate(paths):
        with SafetensorsReader(shard) as reader:
            for key in reader.keys():
                if names is None or names.get(key) == i:
                    state[key] = reader.get_torch(key)
    if names is not None:
        missing_in_shards(names, set(state), paths, source)
    return state
