"""What a .slim file's `base` names, rebuilt: the file format knows no model, model builders register.

A manifest's `base` says where the compressed model came from (`{"kind": "zoo", "name": ...}`,
`{"kind": "hf", "config": ...}`, `{"kind": "weights"}`, `{"kind": "graph", "graph": ...}`,
`{"kind": "user"}`). The layers that know models register one builder per kind (`slimkit.zoo.resolve`
registers zoo, hf and weights); runtime layers register steps to run after a model is loaded
(`slimkit.nn.bert_fast` installs its fast layers).

A user's own model is saved as a "graph" base: its architecture traced with torch.fx and stored as
JSON (`slimkit.surgery.graph`), so `load(path)` rebuilds it without the user's class. When it cannot
be traced, the base is `{"kind": "user", "why": ...}` and `load` needs `model=`.

>>> @register_base("toy")
... def build_toy(base, manifest): return ToyNet(**base["options"])
>>> build_base({"kind": "toy", "options": {...}}, None)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.core.provenance import base_of
from slimkit.core.text import clean
from slimkit.io.manifest import Manifest
from slimkit.surgery.graph import capture, graph_module

BaseBuilder = Callable[[dict, "Manifest | None"], nn.Module]
_BUILDERS: dict[str, BaseBuilder] = {}
_AFTER_LOAD: list[Callable[[nn.Module], object]] = []


def register_base(kind: str) -> Callable[[BaseBuilder], BaseBuilder]:
    """Decorator: `builder(base, manifest) -> module` rebuilds the architecture of bases of `kind`."""
    def wrap(builder: BaseBuilder) -> BaseBuilder:
        if kind in _BUILDERS and _BUILDERS[kind] is not builder:
            raise ValueError(f"base kind {kind!r} registered twice")
        _BUILDERS[kind] = builder
        return builder

    return wrap


def register_after_load(step: Callable[[nn.Module], object]) -> Callable[[nn.Module], object]:
    """Run `step(model)` on every model `load` rebuilds (after its tensors are in place)."""
    if step not in _AFTER_LOAD:
        _AFTER_LOAD.append(step)
    return step


def build_base(base: dict, model: nn.Module | None, manifest: Manifest | None = None) -> nn.Module:
    """The architecture a .slim file was made from, with its original (uncompressed) shapes.

    `model` (the user's own architecture) wins when given; a "user" base needs it."""
    if model is not None:
        return model
    kind = base.get("kind")
    if kind == "user":
        why = base.get("why")
        if isinstance(why, str) and why:
            raise SlimError(f"this .slim file was made from a user model whose architecture could not be "
                            f"captured at save time ({clean(why, 300)}): pass its architecture, load(path, model=...)")
        raise SlimError("this .slim file was made from a user model and holds no architecture: pass its "
                        "architecture, load(path, model=...)")
    builder = _BUILDERS.get(kind) if isinstance(kind, str) else None
    if builder is None:
        raise SlimFormatError(f"unknown base model kind {str(kind)[:80]!r} in the manifest")
    return builder(base, manifest)


def after_load(model: nn.Module) -> None:
    """Run the registered after-load steps on `model`."""
    for step in _AFTER_LOAD:
        step(model)


def base_to_save(model: nn.Module) -> dict:
    """The manifest `base` for `model`: where it came from, or for a user's own module its captured
    graph (`{"kind": "graph", "class": ..., "graph": ...}`), else `{"kind": "user", "why": ...}`."""
    base = base_of(model)
    if base.get("kind") != "user":
        return base
    graph, why = capture(model)
    if graph is None:
        return {**base, "why": why}
    return {"kind": "graph", "class": type(model).__name__[:100], "graph": graph}


@register_base("graph")
def _build_graph(base: dict, manifest: Manifest | None) -> nn.Module:
    return graph_module(base.get("graph"), "manifest base 'graph'")
