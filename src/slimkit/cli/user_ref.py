"""Your own model and data on the command line: `path/to/file.py:NAME` or `package.module:NAME`.

A MODEL reference names a callable that returns an `nn.Module` (a factory function or the class),
or the module itself; a `--data` reference names a callable that returns `(data, metric)`, data as
`sk.compress` takes it (a DataLoader or an iterable of batches) and `metric(model) -> float` or None.

Resolving a reference imports that file or module and calls NAME: it runs the user's code, as
`python file.py` would, at the user's request. Every way it can go wrong (no such file, not a .py
file, no NAME, NAME returns no module, the user's code raising) is one `SlimError` line naming the
reference; `--debug` shows the user's traceback.

>>> model = load_model("models/net.py:build")           # also builtin:NAME, a .slim, a HF folder ...
>>> task = load_task(model, "models/data.py:data")      # the same task `sk.compress` builds
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.provenance import task_for
from slimkit.core.task import Task
from slimkit.core.text import clean
from slimkit.core.user_task import Metric, task_from
from slimkit.zoo.resolve import resolve

MODEL_HELP = ("builtin:NAME, a .slim file, a HF folder, .safetensors, or your own model as file.py:NAME or "
              "package.module:NAME (this imports and runs that Python code)")
DATA_HELP = ("Your data: file.py:NAME or package.module:NAME, a callable returning (data, metric): a DataLoader "
             "or iterable of batches, and metric(model) -> float or None. This imports and runs that code.")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_reference(ref: str) -> bool:
    """True for `file.py:NAME` / `package.module:NAME` (not `builtin:`, not an existing path)."""
    where, sep, name = ref.rpartition(":")
    if not sep or not where or ref.startswith("builtin:") or os.path.exists(ref):
        return False
    return name.isidentifier() and (where.endswith(".py") or "/" in where or os.sep in where
                                    or _MODULE.fullmatch(where) is not None or os.path.isfile(where))


def reference_file(ref: str) -> str | None:
    """The file behind a `file.py:NAME` reference (to keep outputs off it), else None."""
    if not is_reference(ref):
        return None
    where = ref.rpartition(":")[0]
    return where if os.path.isfile(where) else None


def load_model(ref: str, trust_pickle: bool = False) -> nn.Module:
    """A model from any reference: `file.py:NAME` / `module:NAME` here, the rest by `resolve`."""
    if not is_reference(ref):
        return resolve(ref, trust_pickle=trust_pickle)
    obj = _load(ref, ref)
    model = obj if isinstance(obj, nn.Module) else _call(ref, obj, "a model")
    if not isinstance(model, nn.Module):
        raise SlimError(f"{ref}: {ref.rpartition(':')[2]}() returned a {type(model).__name__}, not a torch nn.Module")
    return model


def load_data(ref: str) -> tuple[object, Metric | None]:
    """`(data, metric)` from a `--data` reference; the metric reports its own errors in one line."""
    if not is_reference(ref):
        raise SlimError(f"--data {ref}: expected file.py:NAME or package.module:NAME, a callable that returns "
                        "(data, metric)")
    label = f"--data {ref}"
    obj = _load(ref, label)
    value = obj if isinstance(obj, tuple) else _call(label, obj, "(data, metric)")
    if not isinstance(value, tuple) or len(value) != 2:
        got = f"a tuple of {len(value)}" if isinstance(value, tuple) else f"a {type(value).__name__}"
        raise SlimError(f"--data {ref} returned {got}; it must return (data, metric), metric None or "
                        "metric(model) -> float")
    data, metric = value
    if metric is not None and not callable(metric):
        raise SlimError(f"--data {ref}: the metric is a {type(metric).__name__}, not a callable "
                        "metric(model) -> float (or None)")
    return data, None if metric is None else _guarded_metric(ref, metric)


def load_task(model: nn.Module, data_ref: str | None) -> Task | None:
    """The task `sk.compress` builds from `--data` for `model` (None without `--data`); reading the
    user's batches is their code too, so its errors are one line naming the reference."""
    if data_ref is None:
        return None
    data, metric = load_data(data_ref)
    try:
        return task_from(data, metric, model)
    except SlimError as exc:
        raise SlimError(f"--data {data_ref}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the user's Dataset / DataLoader raised
        raise SlimError(f"--data {data_ref}: reading your data raised {_one_line(exc)}") from exc


def model_and_task(ref: str, data_ref: str | None, trust_pickle: bool = False,
                   need: str | None = None) -> tuple[nn.Module, Task | None]:
    """The model a command names and its task: from `--data` when given, else the model's own
    (builtin and Hugging Face models; None for a model of your own). With `need` (what the command
    does, e.g. "compressing") a missing task is one line, before your code runs where possible."""
    if need and data_ref is None and is_reference(ref):
        raise needs_data(ref, need)
    model = load_model(ref, trust_pickle=trust_pickle)
    task = load_task(model, data_ref) or task_for(model)
    if need and task is None:
        raise needs_data(ref, need)
    return model, task


def needs_data(model_ref: str, doing: str) -> SlimError:
    """The one line for a model without a task given without `--data` where a command needs one."""
    return SlimError(f"{model_ref}: {doing} a model of your own needs --data file.py:NAME (a callable that returns "
                     "(data, metric))")


def _load(ref: str, label: str) -> object:
    """NAME of the file or module `ref` names; errors start with `label` (the reference, or
    `--data` and the reference)."""
    where, _, name = ref.rpartition(":")
    module = _import_file(label, where) if _is_file(where) else _import_module(label, where)
    if not hasattr(module, name):
        names = sorted(k for k, v in vars(module).items() if not k.startswith("_") and callable(v)
                       and getattr(v, "__module__", None) == module.__name__)
        has = f" (it defines: {', '.join(names[:8])})" if names else ""
        raise SlimError(f"{label}: {where} has no {name!r}{has}")
    return getattr(module, name)


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where or os.path.isfile(where)


def _import_file(label: str, where: str) -> ModuleType:
    path = Path(where)
    if not path.is_file():
        raise SlimError(f"{label}: no such file {where}" if not path.exists() else f"{label}: {where} is not a file")
    if path.suffix != ".py":
        raise SlimError(f"{label}: {where} is not a Python file (.py); a reference is file.py:NAME or "
                        "package.module:NAME")
    resolved = path.resolve()
    tag = hashlib.blake2b(str(resolved).encode(), digest_size=6).hexdigest()
    name = "slimkit_user_" + re.sub(r"\W", "_", path.stem) + "_" + tag
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise SlimError(f"{label}: cannot import {where}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses, typing and torch.fx look classes up by module name
    try:
        with _on_path(resolved.parent):
            spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        _reraise(label, exc, f"importing {where}")
    return module


def _import_module(label: str, where: str) -> ModuleType:
    try:
        with _on_path(Path.cwd()):   # as `python -m`: the current folder's packages import
            return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and (where == exc.name or where.startswith(exc.name + ".")):
            raise SlimError(f"{label}: no module named {exc.name!r} (a file is written path/to/file.py:NAME)") \
                from None
        _reraise(label, exc, f"importing {where}")
    except BaseException as exc:
        _reraise(label, exc, f"importing {where}")


def _call(label: str, factory: object, what: str) -> object:
    if not callable(factory):
        raise SlimError(f"{label} is a {type(factory).__name__}, not a callable that returns {what}")
    try:
        return factory()
    except BaseException as exc:
        _reraise(label, exc, f"calling {label.rpartition(':')[2]}()")


def _guarded_metric(ref: str, metric: Metric) -> Metric:
    @functools.wraps(metric)   # keeps its __name__: the score's name in reports
    def guarded(model: nn.Module) -> float:
        try:
            return metric(model)
        except SlimError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's metric
            raise SlimError(f"--data {ref}: your metric raised {_one_line(exc)}") from exc
    return guarded


def _reraise(label: str, exc: BaseException, doing: str) -> NoReturn:
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, SlimError):
        raise SlimError(f"{label}: {exc}") from exc
    raise SlimError(f"{label}: your code raised {_one_line(exc)} while {doing} (--debug shows where)") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return clean(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 200)


@contextmanager
def _on_path(folder: Path):
    """`folder` first on sys.path while the user's code is imported (its sibling modules import)."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:
            pass
