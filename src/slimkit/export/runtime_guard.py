"""What `slimkit.export.runtime` checks on every call, kept cheap: which arguments a call passes
(`Signature`), and whether the model changed since its graph was exported (`Watch`).

`Watch` remembers the model's modules and tensors. Per call it compares each tensor's storage and
version counter (an in-place change, a `load_state_dict`, an optimizer step bumps it) and looks for
forward hooks; it walks the module tree again only after some module somewhere registered a
parameter, buffer or submodule (torch's global registration hooks count those). These checks run on
every call a graph answers, so they read the tensors with C-level loops (`map`) and test the modules'
hook dicts in one `any`: at batch 1 a small graph runs in ~15 us and the checks are part of its cost.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from slimkit.core.torch_utils import version_of

# dtypes ONNX Runtime takes from numpy
_DTYPES = {torch.float32, torch.float16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
           torch.uint8, torch.bool}
_GENERATION = [0]
_HANDLES: list[Any] = []
_VERSION = operator.attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr
_REQUIRES_GRAD = operator.attrgetter("requires_grad")


class Signature:
    """The named parameters of a forward, to bind a call's arguments by name."""

    def __init__(self, forward: Any):
        params = inspect.signature(forward).parameters.values()
        kinds = inspect.Parameter
        self.positional = [p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
        self.keywords = {p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
        self.none_default = {p.name for p in params if p.default is None}

    def bind(self, args: tuple, kwargs: dict) -> tuple[list[str | None] | None, str]:
        """The parameter name of each argument (positional, then keyword; None for a None one that
        the graph leaves out), or None and why the graph cannot take the call."""
        if len(args) > len(self.positional):
            return None, "more positional arguments than the forward names"
        names: list[str | None] = []
        given = [*zip(self.positional, args, strict=False), *kwargs.items()]
        for i, (name, value) in enumerate(given):
            if i >= len(args) and (name not in self.keywords or name in names):
                return None, f"argument {name!r} is not a named parameter of the forward"
            if value is None:
                if name not in self.none_default:
                    return None, f"argument {name!r} is None where its default is not"
                names.append(None)
                continue
            if not isinstance(value, torch.Tensor):
                return None, f"argument {name!r} is a {type(value).__name__}, not a tensor"
            if name not in self.keywords:
                return None, f"argument {name!r} is positional-only"
            names.append(name)
        named = gather(names, args, kwargs)
        if not named:
            return None, "no tensor arguments"
        batch = None
        for name, t in named.items():
            if t.device.type != "cpu" or t.dtype not in _DTYPES or t.dim() == 0 or t.shape[0] == 0:
                return None, f"argument {name!r} is not a batched CPU tensor ONNX Runtime takes"
            if batch is not None and t.shape[0] != batch:
                return None, "the inputs disagree on the batch size"
            batch = t.shape[0]
        return names, ""

    @staticmethod
    def key(named: dict[str, torch.Tensor]) -> tuple[tuple, int]:
        """(the inputs' names, dtypes and fixed sizes; the batch bucket, `batch_bucket`)."""
        sig = tuple((k, v.dtype, tuple(None if _dynamic(v, i) else s for i, s in enumerate(v.shape)))
                    for k, v in named.items())
        return sig, batch_bucket(next(iter(named.values())).shape[0])


# batch buckets: each is measured on its own first call (a choice made while scoring 360 samples at
# once does not hold for batches of 32); 0 stands for "more than the last"
BATCH_BUCKETS = (1, 8, 64, 512)


def batch_bucket(batch: int) -> int:
    """The smallest of BATCH_BUCKETS that holds `batch`, else 0."""
    return next((b for b in BATCH_BUCKETS if batch <= b), 0)


def call_key(args: tuple, kwargs: dict) -> tuple | None:
    """A hashable summary of a call: the argument count, keyword names, and each argument's dtype,
    shape, device and requires_grad (None for None); None when an argument is anything else."""
    if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:   # the common call, cheaply
        v = args[0]
        return 1, (v.dtype, v.shape, v.device, v.requires_grad)
    parts: list[Any] = [len(args), *kwargs]
    for v in (*args, *kwargs.values()):
        if v is None:
            parts.append(None)
        elif isinstance(v, torch.Tensor):
            parts.append((v.dtype, v.shape, v.device, v.requires_grad))
        else:
            return None
    return tuple(parts)


def gather(names: list[str | None], args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """The call's tensors by parameter name (`Signature.bind`'s names)."""
    return {n: v for n, v in zip(names, (*args, *kwargs.values()), strict=True) if n is not None}


def _dynamic(t: torch.Tensor, axis: int) -> bool:
    """The axes `export_onnx` makes dynamic: the batch, and the sequence of integer token inputs."""
    return axis == 0 or (axis == 1 and not t.is_floating_point() and t.dim() >= 2)


def signature_label(graph_key: tuple) -> str:
    """'x:float32[*,64] threads=2': each input (a * for each dynamic axis), and the thread count."""
    sig, threads = graph_key
    inputs = " ".join(f"{k}:{str(dtype).removeprefix('torch.')}[{','.join('*' if s is None else str(s) for s in dims)}]"
                      for k, dtype, dims in sig)
    return f"{inputs} threads={threads}"


def batch_label(key: tuple[tuple, int]) -> str:
    """signature_label plus the batch bucket: 'batch=1', 'batch=2-8', 'batch=9-64', 'batch=65-512',
    'batch=>512'."""
    b = key[1]
    if b == 1:
        text = "1"
    elif b == 0:
        text = f">{BATCH_BUCKETS[-1]}"
    else:
        text = f"{BATCH_BUCKETS[BATCH_BUCKETS.index(b) - 1] + 1}-{b}"
    return f"{signature_label(key[0])} batch={text}"


def _bump(*_: object) -> None:
    """Count a registration. Not while torch.compile traces: a forward that builds modules (Hugging
    Face's decoder slices its ModuleList each call) would leave a guard on the count, which every
    call changes, and the compiled step would be compiled again at each call."""
    if not torch.compiler.is_compiling():
        _GENERATION[0] += 1


def _count_registrations() -> None:
    if not _HANDLES:
        _HANDLES.extend(register(_bump) for register in (
            torch_module.register_module_parameter_registration_hook,
            torch_module.register_module_buffer_registration_hook,
            torch_module.register_module_module_registration_hook))


class Watch:
    """A model's modules and tensors as they were when its graph was exported."""

    def __init__(self, model: nn.Module):
        _count_registrations()
        self.generation = _GENERATION[0]
        self.modules = list(model.modules())
        self.params = [p for m in self.modules for p in m._parameters.values() if p is not None]
        self.tensors = [t for m in self.modules for d in (m._parameters, m._buffers) for t in d.values()
                        if t is not None]
        # the dicts register_forward_hook / register_forward_pre_hook fill in place (a module that
        # replaces one is a module registration, which rebuilds the watch)
        self.hook_dicts = [d for m in self.modules[1:] for d in (m._forward_hooks, m._forward_pre_hooks)]
        self.marks = _marks(self.tensors)

    def changed(self, model: nn.Module) -> bool:
        """Whether a tensor was changed in place, or a parameter, buffer or module replaced."""
        if self.generation != _GENERATION[0]:
            fresh = Watch(model)
            if (list(map(id, fresh.modules)) != list(map(id, self.modules))
                    or list(map(id, fresh.tensors)) != list(map(id, self.tensors))):
                return True
            self.generation = fresh.generation
            self.hook_dicts = fresh.hook_dicts
        return _marks(self.tensors) != self.marks

    def needs_grad(self) -> bool:
        return any(map(_REQUIRES_GRAD, self.params))

    def hooked(self) -> bool:
        """Whether a forward hook of a submodule would be skipped (the model's own hooks run around
        the dispatcher; Hugging Face's idle output-capturing hooks do nothing unless asked)."""
        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return True
        if not any(self.hook_dicts):
            return False
        return any(_foreign(h) for d in self.hook_dicts if d for h in d.values())


def _foreign(hook: object) -> bool:
    return not getattr(hook, "__qualname__", "").endswith("output_capturing_hook")


def _marks(tensors: list[torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Each tensor's storage address and version counter (-1 for inference tensors, which keep none)."""
    pointers = tuple(map(_DATA_PTR, tensors))
    try:
        versions = tuple(map(_VERSION, tensors))
    except RuntimeError:   # an inference tensor among them
        versions = tuple(map(version_of, tensors))
    return pointers, versions
