"""Model references: `builtin:NAME`, a Hugging Face folder, a `.safetensors` checkpoint, a `.slim` file.

>>> model = resolve("builtin:lenet-300-100")
>>> model = resolve("path/to/hf-folder")
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.core.provenance import tag
from slimkit.io.artifact import load
from slimkit.io.bases import register_base
from slimkit.io.decode import current_base_budget
from slimkit.io.manifest import Manifest
from slimkit.io.safetensors_file import SafetensorsReader
from slimkit.zoo.config_limits import check_config
from slimkit.zoo.hf import build_from_base, load_hf_folder
from slimkit.zoo.registry import ZOO, entry

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class WeightsOnly(nn.Module):
    """A bare checkpoint: the tensors of a `.safetensors` file under their own names, no forward."""

    def __init__(self, shapes: dict[str, tuple[list[int], torch.dtype]], device: str = "cpu"):
        super().__init__()
        for name, (shape, dtype) in shapes.items():
            *path, leaf = name.split(".")
            holder: nn.Module = self
            try:   # names come from a file: "", "a..b", "forward", "x" beside "x.y" are refused
                for part in path:
                    if part not in holder._modules:
                        holder.add_module(part, nn.Module())
                    holder = holder._modules[part]
                holder.register_buffer(leaf, torch.empty(shape, dtype=dtype, device=device))
            except (KeyError, TypeError, AttributeError) as exc:
                why = str(exc.args[0]) if exc.args else type(exc).__name__
                raise SlimFormatError(f"tensor name {name[:80]!r} cannot be a module path: {why[:80]}") from None

    def forward(self, *args, **kwargs):
        raise SlimError("a weights-only checkpoint has no architecture to run; pass a model or HF folder")


def load_safetensors_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Read a weights-only `.safetensors` checkpoint (no pickle) into a `WeightsOnly` module."""
    with SafetensorsReader(path) as reader:  # the header validated before anything is allocated; pread, no map
        state = {key: reader.get_torch(key) for key in reader.keys()}
    model = WeightsOnly({k: (list(v.shape), v.dtype) for k, v in state.items()}, device="meta")
    model.load_state_dict(state, assign=True)
    return tag(model, {"kind": "weights", "path": str(Path(path).resolve())})


def load_pickled_weights(path: str | os.PathLike) -> nn.Module:
    """A pickled state dict, read with `torch.load(weights_only=True)`: plain tensors only, never code."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # protocol notes from the restricted unpickler
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SlimError(f"{path}: not a plain weights checkpoint ({first[:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise SlimError(f"{path}: expected a dict of tensors (a state dict)")
    model = WeightsOnly({k: (list(v.shape), v.dtype) for k, v in state.items()}, device="meta")
    model.load_state_dict(state, assign=True)
    return tag(model, {"kind": "weights"})


def resolve(ref: str, trust_pickle: bool = False) -> nn.Module:
    """Turn a model reference into a module (see module docstring)."""
    if ref.startswith("builtin:"):
        return entry(ref.removeprefix("builtin:")).load()
    path = Path(ref)
    if not path.exists():
        hint = f" (did you mean builtin:{ref}?)" if ref in ZOO else ""
        raise SlimError(f"no such model or file: {ref}{hint}")
    if path.is_dir():
        return load_hf_folder(path)
    if path.suffix == ".slim":
        return load(path)
    if path.suffix == ".safetensors":
        return load_safetensors_checkpoint(path)
    if path.suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise SlimError(f"{ref}: pickled checkpoints can run code when loaded and are refused; "
                            "convert it to .safetensors (or opt in with --trust-pickle / trust_pickle=True)")
        return load_pickled_weights(path)
    raise SlimError(f"{ref}: unknown model file type {path.suffix!r} (expected .slim, .safetensors "
                    "or a Hugging Face folder)")


@register_base("zoo")
def build_zoo_base(base: dict, manifest: Manifest | None) -> nn.Module:
    """A builtin model's architecture (random weights)."""
    name = base.get("name")
    if not isinstance(name, str) or name not in ZOO:
        raise SlimFormatError(f"the manifest names an unknown builtin model {str(name)[:80]!r}")
    return entry(name).build()


@register_base("hf")
def build_hf_base(base: dict, manifest: Manifest | None) -> nn.Module:
    """A Hugging Face architecture from the config in the manifest, checked before it is built
    (`slimkit.zoo.config_limits`): not quantized, no more layers than the file has tensors, and no
    more bytes than the file may decode to (`current_base_budget`, set by `load`)."""
    if manifest is None:
        return build_from_base(base)
    stored = sum(math.prod(t.shape) * 8 for t in manifest.tensors.values())
    limit = 64 * stored + (1 << 26)   # the architecture may not outgrow what the file holds
    budget = current_base_budget()
    limit = limit if budget is None else min(limit, budget)
    try:
        if isinstance(base.get("config"), dict):
            check_config(base["config"], len(manifest.tensors) + len(manifest.aliases), "", max_bytes=limit)
        return build_from_base(base, max_bytes=limit)
    except SlimFormatError:
        raise
    except SlimError as exc:
        raise SlimFormatError(f"the manifest's Hugging Face base: {exc}") from None


@register_base("weights")
def build_weights_base(base: dict, manifest: Manifest | None) -> nn.Module:
    """A bare checkpoint: its tensors' names and shapes, from the manifest."""
    if manifest is None:
        raise SlimError("a weights-only base needs the manifest that lists its tensors")
    shapes = {k: (v.shape, getattr(torch, v.dtype)) for k, v in manifest.tensors.items()}
    shapes.update({k: shapes[t] for k, t in manifest.aliases.items()})
    return tag(WeightsOnly(shapes, device="meta"), base)
