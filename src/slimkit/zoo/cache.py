"""The zoo's cache of trained weights: XDG cache folder, safetensors, with a checksum inside."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from slimkit.core.errors import SlimError
from slimkit.io.safetensors_file import SafetensorsReader, atomic_write, serialize


def cache_dir() -> Path:
    """$SLIMKIT_CACHE, else $XDG_CACHE_HOME/slimkit, else ~/.cache/slimkit."""
    root = os.environ.get("SLIMKIT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "slimkit"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.array(arrays[key], order="C", copy=None).tobytes())
    return h.hexdigest()


def save_cached(name: str, state: dict[str, torch.Tensor]) -> Path:
    arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
    path = cache_dir() / "zoo" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, serialize(arrays, {"sha256": _digest(arrays)}))
    return path


def load_cached(name: str) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None when missing or corrupt (the caller then retrains)."""
    path = cache_dir() / "zoo" / f"{name}.safetensors"
    if not path.is_file():
        return None
    try:
        with SafetensorsReader(path) as reader:
            arrays = {k: np.array(reader.get(k)) for k in reader.keys()}
            expected = reader.metadata.get("sha256")
    except SlimError:
        return None
    if expected != _digest(arrays):
        return None
    return {k: torch.from_numpy(v) for k, v in arrays.items()}
