"""Structural edits: change a model's structure and record it so a .slim file can replay it.

Every edit is a JSON object with an "op". Methods call `replace_module` / `set_attr`, which
apply the change and append to the model's edit log (`model.slimkit_edits`). At save time the
log is compacted and each replaced module is described by its *final* spec, so later edits of
the same module (shrink, then quantize) replay correctly.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.surgery.specs import from_spec, to_spec

EDIT_OPS: dict[str, Callable[[nn.Module, dict], None]] = {}

_JSON_SCALARS = (int, float, str, bool, type(None))


def register_op(name: str):
    """Decorator: `fn(model, edit)` applies an edit of kind `name` when a file is loaded."""

    def deco(fn):
        EDIT_OPS[name] = fn
        return fn

    return deco


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise SlimError(f"model has no module named {name!r}") from None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = get_submodule(model, parent_name) if parent_name else model
    if not hasattr(parent, child) and child not in parent._modules:
        raise SlimError(f"model has no module named {name!r}")
    setattr(parent, child, module)


def edit_log(model: nn.Module) -> list[dict]:
    log = model.__dict__.get("slimkit_edits")
    if log is None:
        log = []
        model.__dict__["slimkit_edits"] = log
    return log


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at dotted path `name` in `model` and record the edit."""
    to_spec(module)  # fail now, not at save time, if it cannot be recorded
    _set_submodule(model, name, module)
    edit_log(model).append({"op": "replace", "module": name})


def set_attr(model: nn.Module, name: str, attr: str, value: object) -> None:
    """Set a plain attribute (e.g. `num_attention_heads`) on a submodule and record it."""
    if not isinstance(value, _JSON_SCALARS):
        raise TypeError(f"set_attr value must be a JSON scalar, got {type(value).__name__}")
    setattr(get_submodule(model, name) if name else model, attr, value)
    edit_log(model).append({"op": "setattr", "module": name, "attr": attr, "value": value})


def compact_edits(model: nn.Module) -> list[dict]:
    """The edit log as it will be saved: superseded replaces dropped, final specs filled in.

    Specs describe the *current* module tree recursively, so a replace is redundant when the same
    module or an ancestor is replaced later, or when an ancestor's replace is kept anyway.
    """
    log = edit_log(model)
    kept: list[tuple[int, dict]] = []
    for i, edit in enumerate(log):
        if edit["op"] == "replace":
            name = edit["module"]
            later = [e["module"] for e in log[i + 1:] if e["op"] == "replace"]
            if any(n == name or name.startswith(n + ".") for n in later):
                continue
        kept.append((i, edit))
    roots = {e["module"] for _, e in kept if e["op"] == "replace"}
    out: list[dict] = []
    for _, edit in kept:
        if edit["op"] != "replace":
            out.append(dict(edit))
            continue
        name = edit["module"]
        if any(name.startswith(r + ".") for r in roots):
            continue
        out.append({"op": "replace", "module": name, "spec": to_spec(get_submodule(model, name))})
    return out


def replay_edits(model: nn.Module, edits: list) -> None:
    """Apply saved edits in order (loading side). Raises SlimFormatError when one is malformed."""
    if not isinstance(edits, list):
        raise SlimFormatError("manifest 'edits' must be a list")
    for i, edit in enumerate(edits):
        op = edit.get("op") if isinstance(edit, dict) else None
        if not isinstance(op, str) or op not in EDIT_OPS:
            raise SlimFormatError(f"edit #{i} has an unknown op: {str(edit)[:80]}")
        try:
            EDIT_OPS[op](model, edit)
        except SlimError as exc:
            raise SlimFormatError(f"edit #{i} ({op}): {_first_line(exc)}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, RuntimeError) as exc:
            # the edit comes from a file: any failure to apply it is a malformed file, in one line
            raise SlimFormatError(f"edit #{i} ({op}) is invalid: {type(exc).__name__}: {_first_line(exc)}") from None
    model.__dict__["slimkit_edits"] = [dict(e) for e in edits]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@register_op("replace")
def _replay_replace(model: nn.Module, edit: dict) -> None:
    name = edit.get("module")
    if not isinstance(name, str) or not name:
        raise SlimFormatError("replace edit needs a module name")
    _set_submodule(model, name, from_spec(edit.get("spec")))


@register_op("setattr")
def _replay_setattr(model: nn.Module, edit: dict) -> None:
    name, attr, value = edit.get("module", ""), edit.get("attr"), edit.get("value")
    if not isinstance(name, str) or not isinstance(attr, str) or not isinstance(value, _JSON_SCALARS):
        raise SlimFormatError("setattr edit needs module, attr and a scalar value")
    if attr.startswith("_"):
        raise SlimFormatError(f"setattr edit may not set private attribute {attr!r}")
    target = get_submodule(model, name) if name else model
    if not hasattr(target, attr):
        raise SlimFormatError(f"setattr edit: {name or 'model'} has no attribute {attr!r}")
    # only a plain value the module holds itself, replaced by one of the same kind: never a method,
    # a submodule, a tensor, a property or a class attribute, never a number turned into a string
    current = vars(target).get(attr, _MISSING)
    if current is _MISSING or not isinstance(current, _JSON_SCALARS) or _kind(current) != _kind(value):
        held = "a method or class attribute" if current is _MISSING else type(current).__name__
        raise SlimFormatError(f"setattr edit: {name or 'model'}.{attr} is {held}; only a plain "
                              f"{_kind(value)} attribute can be set to {str(value)[:40]!r}")
    setattr(target, attr, value)


_MISSING = object()


def _kind(value: object) -> str:
    """The JSON kind of a value: int and float are both "number"; bool, str and None their own."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str" if isinstance(value, str) else "null"
