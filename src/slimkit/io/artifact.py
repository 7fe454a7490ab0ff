"""save / load of the .slim artifact: one safetensors file, a JSON manifest, no pickle.

>>> import slimkit as sk
>>> sk.save(model, "lenet.slim")          # atomic: temp file, fsync, rename
>>> model = sk.load("lenet.slim")         # replays structural edits, decodes tensors
>>> tensors = sk.load_state_dict("lenet.slim")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.core.original import original_info
from slimkit.core.text import clean
from slimkit.io.bases import after_load, base_to_save, build_base
from slimkit.io.codecs import encode_chain
from slimkit.io.decode import SIDE_SEP, _decode_all, _read_manifest, base_budget
from slimkit.io.decode import decode_tensor as decode_tensor
from slimkit.io.decode import decoded_budget as decoded_budget
from slimkit.io.decode import group_arrays as group_arrays
from slimkit.io.layout import StoredArrays, write_slim
from slimkit.io.lazy import LazyStateDict
from slimkit.io.manifest import METADATA_KEY, Manifest, TensorEntry
from slimkit.io.runtimes import install_runtime, resolve_runtime
from slimkit.io.safetensors_file import SafetensorsReader, atomic_write, serialize
from slimkit.surgery.edits import compact_edits, replay_edits


def codec_chains(model: nn.Module) -> dict[str, list[dict]]:
    """Full state-dict key -> codec chain, from each module's `slim_codecs` attribute."""
    chains: dict[str, list[dict]] = {}
    for prefix, module in model.named_modules():
        for local, chain in module.__dict__.get("slim_codecs", {}).items():
            chains[f"{prefix}.{local}" if prefix else local] = list(chain)
    return chains


def set_codec(module: nn.Module, tensor: str, chain: list[dict]) -> None:
    """Store `module.<tensor>` through `chain` when the model is saved."""
    module.__dict__.setdefault("slim_codecs", {})[tensor] = list(chain)


def append_codec(module: nn.Module, tensor: str, stage: dict) -> None:
    """Add one codec stage after the chain already set for `module.<tensor>` (e.g. palette after
    sparse, entropy coding after palette)."""
    chains = module.__dict__.setdefault("slim_codecs", {})
    chains[tensor] = [*chains.get(tensor, []), dict(stage)]


def codec_chain(module: nn.Module, tensor: str) -> list[dict]:
    """The chain currently set for `module.<tensor>` (empty: stored raw)."""
    return list(module.__dict__.get("slim_codecs", {}).get(tensor, []))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


def encode_tensor(key: str, t: torch.Tensor, chain: list[dict]) -> tuple[dict[str, np.ndarray], TensorEntry]:
    """State-dict tensor `key` through codec `chain`: its stored arrays by name (`key`, side arrays
    `key::side`) and its manifest entry. `encode_model` and the streaming writers both use it."""
    stored, stages = encode_chain(_to_numpy(t), chain)
    arrays = {key if name == "data" else f"{key}{SIDE_SEP}{name}": arr for name, arr in stored.items()}
    return arrays, TensorEntry(dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape), chain=stages)


def encode_model(model: nn.Module, info: dict | None = None) -> tuple[dict[str, np.ndarray], Manifest]:
    """Everything `save` writes, in memory: the stored arrays and the manifest."""

    chains = codec_chains(model)
    arrays: dict[str, np.ndarray] = {}
    tensors: dict[str, TensorEntry] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        stored, tensors[key] = encode_tensor(key, t, chains.get(key, []))
        arrays.update(stored)
    manifest = Manifest(base=base_to_save(model), edits=compact_edits(model), tensors=tensors,
                        aliases=aliases, info={**original_info(model), **(info or {})})
    return arrays, manifest


def save(model: nn.Module, path: str | os.PathLike, info: dict | None = None, *, overwrite: bool = True,
         verify: Callable[[Path], object] | None = None) -> int:
    """Write `model` to `path` as a .slim file (atomically) and return its size in bytes.
    `overwrite=False` refuses (SlimError) to replace a file, even one that appears during the save.
    `verify(temporary path)` checks the finished file before it takes the name `path`; if it raises,
    the file is removed and `path` is left as it was (`slimkit.pipeline.verify` reloads and compares).

    >>> save(model, "lenet.slim", overwrite=False)
    """
    arrays, manifest = encode_model(model, info)
    return write_slim(path, arrays, manifest, overwrite, verify)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The validated manifest of a .slim file, without decoding any tensor."""
    with SafetensorsReader(path) as reader:
        return _read_manifest(reader)


def read_raw(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """The stored (still encoded) arrays by name and the manifest as a dict, whatever the layout.

    For tools and tests that inspect or rewrite files; `write_raw` writes them back.
    """
    with SafetensorsReader(path) as reader:
        manifest = _read_manifest(reader)
        stored = StoredArrays(reader, manifest)
        arrays = {k: np.array(stored.get(k)) for k in stored.keys()}
    raw = manifest.model_dump()
    raw.pop("packed")
    return arrays, raw


def write_raw(path: str | os.PathLike, arrays: dict[str, np.ndarray], manifest: dict) -> None:
    """Write arrays and a manifest dict as-is (named layout, no validation): the inverse of `read_raw`."""
    atomic_write(path, serialize(arrays, {METADATA_KEY: json.dumps(manifest, separators=(",", ":"))}))


def load_state_dict(path: str | os.PathLike, lazy: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a .slim file, decoded (codes stay codes for runtime modules).

    `lazy=True` returns a read-only mapping that decodes a tensor when it is looked up
    (`slimkit.io.lazy.LazyStateDict`; close it, or use it in a `with` block).
    """
    if lazy:
        return LazyStateDict(path)  # type: ignore[return-value]
    with SafetensorsReader(path) as reader:
        manifest = _read_manifest(reader)
        return _decode_all(reader, manifest)


def load(path: str | os.PathLike, model: nn.Module | None = None, runtime: str | None = None) -> nn.Module:
    """Rebuild the compressed model stored at `path`.

    `model` supplies the architecture for files made from a user model (base kind "user").
    `runtime` says how it runs (`slimkit.io.runtimes`): "torch" (its own forward), "onnxruntime",
    "auto" (the faster of the two, measured at the first call of each input shape, see
    docs/runtime.md); None: $SLIMKIT_RUNTIME, else "auto". Any runtime returns the same module.

    >>> model = sk.load("lenet-int8.slim", runtime="torch")
    """
    name = resolve_runtime(runtime)  # an unknown name fails before any work
    with SafetensorsReader(path) as reader:
        manifest = _read_manifest(reader)
        state = _decode_all(reader, manifest)
    with base_budget(decoded_budget(os.path.getsize(path))):   # a config cannot outgrow the file
        net = build_base(manifest.base, model, manifest)
    replay_edits(net, manifest.edits)
    _check_runtime_bytes(net, os.path.getsize(path), str(path))
    _load_into(net, state, str(path))
    _retie(net, manifest.aliases)
    _restore_chains(net, manifest)
    after_load(net)  # registered runtime steps, e.g. the fast layers of int8 BERT-style blocks
    # where the file was made ("path") is information, never a place to read: a file from elsewhere
    # could name any local folder (its tokenizer, its reference weights); docs/safety.md
    net.__dict__["slimkit_base"] = {k: v for k, v in manifest.base.items() if k != "path"}
    net.__dict__["slimkit_info"] = manifest.info
    return install_runtime(net.eval(), name)


def _check_runtime_bytes(net: nn.Module, file_size: int, where: str) -> None:
    """Refuse a file whose layers would allocate more to run than its decoded budget allows
    (`runtime_bytes`, see `slimkit.surgery.register_module`): a spec's sizes come from the file."""
    total, budget = 0, decoded_budget(file_size)
    for name, module in net.named_modules():
        need = getattr(module, "runtime_bytes", None)
        if callable(need):
            total += int(need())
            if total > budget:
                raise SlimFormatError(f"{where}: layer {clean(name)!r} needs {total} bytes to run, more than "
                                      f"the {budget} allowed for a file of {file_size} bytes")


def _retie(net: nn.Module, aliases: dict[str, str]) -> None:
    """Make aliased parameters the same object again (tied weights)."""
    for key, target in aliases.items():
        k_mod, _, k_attr = key.rpartition(".")
        t_mod, _, t_attr = target.rpartition(".")
        owner = net.get_submodule(k_mod) if k_mod else net
        source = getattr(net.get_submodule(t_mod) if t_mod else net, t_attr)
        if isinstance(source, nn.Parameter):
            setattr(owner, k_attr, source)


DECODE_ONLY = ("side", "shape", "dtype")


def _restore_chains(net: nn.Module, manifest: Manifest) -> None:
    """Re-attach codec chains so that saving a loaded model writes the same encoding again."""
    for key, entry in manifest.tensors.items():
        if not entry.chain:
            continue
        prefix, _, local = key.rpartition(".")
        module = net.get_submodule(prefix) if prefix else net
        chain = [{k: v for k, v in stage.items() if k not in DECODE_ONLY} for stage in entry.chain]
        set_codec(module, local, chain)


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = net.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SlimFormatError(f"{where}: tensors do not match the architecture "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        raise SlimFormatError(f"{where}: tensor shapes do not match the architecture: {wrong[:3]}")
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise SlimFormatError(f"{where}: cannot load tensors: {str(exc).splitlines()[0]}") from None
    leftover = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if leftover:
        raise SlimError(f"{where}: modules left uninitialised after loading: {leftover[:3]}")


def info_of(model: nn.Module) -> dict[str, Any]:
    return model.__dict__.get("slimkit_info", {})
