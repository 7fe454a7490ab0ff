"""The JSON manifest stored in a .slim file's safetensors `__metadata__["slimkit"]`."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from slimkit.core.errors import SlimFormatError
from slimkit.core.text import clean

FORMAT_VERSION = 1
MAX_RANK = 32           # dimensions of one tensor (torch allows 64; no layer has more than 5)
MAX_DIM = 1 << 48       # one dimension; sizes are checked against the file's bytes later, this keeps them small ints
METADATA_KEY = "slimkit"


class TensorEntry(BaseModel):
    """One state-dict tensor: its decoded dtype and shape, and the codec chain that stores it."""

    model_config = ConfigDict(extra="forbid")
    dtype: str
    shape: list[int]
    chain: list[dict[str, Any]] = []


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["slimkit"] = "slimkit"
    version: int = FORMAT_VERSION
    base: dict[str, Any]
    edits: list[dict[str, Any]] = []
    tensors: dict[str, TensorEntry]
    aliases: dict[str, str] = {}
    info: dict[str, Any] = {}
    packed: dict[str, list] = {}  # packed layout: array name -> [dtype code, shape, offset]

    def to_json(self) -> str:
        dump = self.model_dump()
        for key in ("edits", "aliases", "info", "packed"):  # empty defaults are left out
            if not dump[key]:
                del dump[key]
        return json.dumps(dump, separators=(",", ":"))


def parse_manifest(raw: str, where: str) -> Manifest:
    """Validate the manifest text; any problem is a one-line SlimFormatError naming `where`."""
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise SlimFormatError(f"{where}: invalid manifest at {loc}: {first['msg']}") from None
    if manifest.version != FORMAT_VERSION:
        raise SlimFormatError(f"{where}: format version {manifest.version} is not supported "
                              f"(this slimkit reads version {FORMAT_VERSION})")
    if not isinstance(manifest.base.get("kind"), str):
        raise SlimFormatError(f"{where}: manifest base has no 'kind'")
    for key, target in manifest.aliases.items():
        if target not in manifest.tensors:
            raise SlimFormatError(f"{where}: alias {key!r} points to missing tensor {target!r}")
    for key, entry in manifest.tensors.items():
        if len(entry.shape) > MAX_RANK:
            raise SlimFormatError(f"{where}: tensor {clean(key, 80)!r} has {len(entry.shape)} dimensions "
                                  f"(at most {MAX_RANK})")
        if any(d < 0 or d > MAX_DIM for d in entry.shape):
            raise SlimFormatError(f"{where}: tensor {clean(key, 80)!r} has a dimension below 0 or above {MAX_DIM}")
    return manifest
