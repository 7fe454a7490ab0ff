"""A Hugging Face model without its weights, filled from a safetensors checkpoint one part at a time.

`build_skeleton` builds the folder's `AutoModel` with every parameter on the `meta` device (no
memory; buffers such as rotary frequencies stay real, they are computed, not loaded), as
accelerate's `init_empty_weights(include_buffers=False)` does. `WeightSource` then copies the
tensors of one module (a transformer block, the embeddings) out of the checkpoint (pread)
into real tensors, and `release` puts them back on `meta`, so only what is being worked on is
resident.

>>> model, base = build_skeleton("path/to/llama-folder")
>>> with WeightSource(model, "path/to/llama-folder") as source:
...     source.load("layers.0")          # real tensors for block 0
...     source.release("layers.0")       # back to meta
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.provenance import tag
from slimkit.stream.checkpoint import Checkpoint, Item, open_checkpoint
from slimkit.zoo.hf import (
    ATTN_IMPLEMENTATION,
    AUTO_CLASSES,
    check_folder,
    first_line,
    head_of,
    json_safe,
    linears_for_conv1d,
    quiet,
    read_config,
    tie_head,
)

META = torch.device("meta")


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Within the block, every parameter a module registers is moved to `meta` as it is registered
    (its initialisation then runs on meta: no memory, no time); buffers stay where they are made."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        if param is not None and param.device != META:
            self._parameters[name] = type(param)(param.to(META), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_skeleton(folder: str | os.PathLike) -> tuple[nn.Module, set[str]]:
    """The `AutoModel` (a causal LM: `AutoModelForCausalLM`, head included, a tied head as
    `TiedLMHead`) of a Hugging Face folder with its parameters on `meta`, built as
    `slimkit.zoo.hf.load_hf_folder` builds it (fp32, eager attention, GPT-2 `Conv1D` -> Linear) and
    tagged with the same base, so the .slim file written from it loads with `slimkit.load`.
    Returns the model and the names of the modules that were `Conv1D` (their weights are stored
    transposed in the checkpoint)."""
    from transformers.pytorch_utils import Conv1D

    folder = check_folder(folder)
    head = head_of(read_config(folder))   # a causal LM keeps its head, as `load_hf_folder` does
    with quiet() as transformers:
        try:
            config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
            with params_on_meta():
                model = getattr(transformers, AUTO_CLASSES[head]).from_config(
                    config, dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise SlimError(f"cannot build the model in {str(folder)!r}: {first_line(exc)}") from None
    conv1d = {name for name, m in model.named_modules() if type(m) is Conv1D}
    with params_on_meta():
        model = tie_head(linears_for_conv1d(model)).eval()
    base = {"kind": "hf", "path": str(folder), "config": json_safe(model.config.to_dict())}
    return tag(model, {**base, "head": head} if head else base), conv1d


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, is_parameter) of the parameters and persistent buffers a module holds itself."""
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p, True
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name, b, False


class WeightSource:
    """Fills modules of a skeleton from a checkpoint (a folder, an index json or a .safetensors
    file) and empties them again. Use as a context manager (it holds the open files)."""

    def __init__(self, model: nn.Module, checkpoint: str | os.PathLike, transposed: set[str] | None = None):
        self.model = model
        self.transposed = transposed or set()
        self.ck: Checkpoint = open_checkpoint(checkpoint)
        self.items: dict[str, Item] = {it.name: it for it in self.ck.items()}
        self.prefix = getattr(model, "base_model_prefix", "") or ""

    def item_for(self, key: str) -> Item | None:
        """The checkpoint tensor of model key `key` (also under the task model's prefix, e.g.
        `model.layers.0...` for `layers.0...`, or without it)."""
        names = [key, f"{self.prefix}.{key}", key.removeprefix(f"{self.prefix}.")] if self.prefix else [key]
        return next((self.items[n] for n in names if n in self.items), None)

    def modules(self, name: str, recurse: bool = True) -> Iterator[tuple[str, nn.Module]]:
        module = self.model.get_submodule(name) if name else self.model
        if not recurse:
            yield name, module
            return
        for sub, m in module.named_modules():
            yield (f"{name}.{sub}" if name and sub else name or sub), m

    def load(self, name: str, recurse: bool = True) -> int:
        """Give module `name` (and its descendants) real tensors from the checkpoint, converted to
        the skeleton's dtype; returns the bytes read. A parameter the checkpoint lacks gets the
        module's own initialisation (`reset_parameters`), as `from_pretrained` does for a missing
        pooler; a lacking persistent buffer is an error."""
        read = 0
        for mod_name, module in self.modules(name, recurse):
            missing = False
            for local, tensor, is_param in list(_own_tensors(module)):
                if tensor.device != META:
                    continue
                key = f"{mod_name}.{local}" if mod_name else local
                item = self.item_for(key)
                if item is None:
                    if not is_param:
                        raise SlimError(f"{self.ck.source}: the checkpoint has no tensor {key!r}")
                    value, missing = torch.empty(tensor.shape, dtype=tensor.dtype), True
                else:
                    value = self._read(item, key, tensor)
                    read += item.nbytes
                if is_param:
                    module._parameters[local] = nn.Parameter(value, requires_grad=False)
                else:
                    module._buffers[local] = value
            if missing:
                reset = getattr(module, "reset_parameters", None)
                if reset is None:
                    raise SlimError(f"{self.ck.source}: module {mod_name!r} has parameters the checkpoint lacks")
                with torch.no_grad():
                    reset()
        return read

    def _read(self, item: Item, key: str, like: torch.Tensor) -> torch.Tensor:
        raw = self.ck.tensor(item)
        if key.rpartition(".")[0] in self.transposed and key.endswith(".weight"):
            raw = raw.t()
        if tuple(raw.shape) != tuple(like.shape):
            raise SlimError(f"{self.ck.source}: tensor {item.name!r} has shape {list(item.shape)}, "
                            f"the model's config needs {list(like.shape)}")
        value = raw.to(dtype=like.dtype, memory_format=torch.contiguous_format, copy=True)
        del raw
        self.ck.release(item)
        return value

    def release(self, name: str, recurse: bool = True) -> None:
        """Put the parameters and persistent buffers of module `name` back on `meta` (frees them)."""
        for _, module in self.modules(name, recurse):
            for local, tensor, is_param in list(_own_tensors(module)):
                if tensor.device == META:
                    continue
                empty = torch.empty(tensor.shape, dtype=tensor.dtype, device=META)
                if is_param:
                    module._parameters[local] = nn.Parameter(empty, requires_grad=False)
                else:
                    module._buffers[local] = empty
            module.__dict__.pop("_low_cache", None)   # runtime copies of the weight (int8 bf16 cache,
            cache = module.__dict__.get("_cache")       # QuantLinear's decoded weight) go too
            if cache is not None and hasattr(cache, "value"):
                cache.key = cache.value = None

    def close(self) -> None:
        self.ck.close()

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def checkpoint_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the tensors of the checkpoint in `folder` (headers left out)."""
    with open_checkpoint(Path(folder)) as ck:
        return ck.nbytes
