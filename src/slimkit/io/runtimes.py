"""How a loaded model runs: `load(path, runtime=...)` names one; the layers that provide runtimes
register them (`slimkit.export.runtime` registers "onnxruntime" and "auto").

A runtime is `install(model, **options) -> model`: it runs after the model's tensors are in place
and the registered after-load steps have run, and returns the model to hand to the user (the same
object, so that its submodules and state-dict keys stay the user's). "torch" is built in and returns
the model unchanged.

A runtime that reroutes calls installs its dispatcher as the instance attribute `model.forward`
(nn.Module.__call__ calls it) and keeps its state in `model.__dict__[RUNTIME_KEY]`, an object with
`previous_forward` (the instance forward it replaced, or None) and `state()` (a dict for reports).
`strip_runtime(model)` undoes that; inside `with torch_only():` dispatchers run the torch forward.

>>> def install_eager(model, **options): return model
>>> register_runtime("eager", install_eager)
>>> runtimes()
['auto', 'eager', 'onnxruntime', 'torch']
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from torch import nn

from slimkit.core.errors import ConfigError

RUNTIME_ENV = "SLIMKIT_RUNTIME"
RUNTIME_KEY = "slimkit_runtime"
DEFAULT = "auto"
_TORCH_ONLY: list[bool] = []

Install = Callable[..., nn.Module]
_RUNTIMES: dict[str, Install] = {}


def register_runtime(name: str, install: Install) -> Install:
    """Make `load(path, runtime=name)` call `install(model, **options)` on the loaded model."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a runtime name must be a non-empty string, got {name!r}")
    if name in _RUNTIMES and _RUNTIMES[name] is not install:
        raise ValueError(f"runtime {name!r} registered twice")
    _RUNTIMES[name] = install
    return install


def runtimes() -> list[str]:
    """The names `load(path, runtime=...)` accepts, sorted."""
    return sorted(_RUNTIMES)


def resolve_runtime(runtime: str | None) -> str:
    """`runtime`, else $SLIMKIT_RUNTIME, else "auto" (or "torch" when nothing registered "auto");
    ConfigError (a ValueError) naming the choices when it is not registered."""
    name = runtime if runtime is not None else os.environ.get(RUNTIME_ENV) or DEFAULT
    if runtime is None and name == DEFAULT and DEFAULT not in _RUNTIMES:
        return "torch"
    if name not in _RUNTIMES:
        where = f" (from ${RUNTIME_ENV})" if runtime is None else ""
        raise ConfigError(f"unknown runtime {str(name)[:80]!r}{where}: choose one of {', '.join(runtimes())}")
    return name


def install_runtime(model: nn.Module, runtime: str | None = None, **options: object) -> nn.Module:
    """Give `model` the runtime `runtime` (resolved as `resolve_runtime` does); returns the model."""
    return _RUNTIMES[resolve_runtime(runtime)](model, **options)


def strip_runtime(model: nn.Module) -> nn.Module:
    """Remove the dispatcher a runtime installed on `model` (its own forward runs again); returns it."""
    state = model.__dict__.pop(RUNTIME_KEY, None)
    if state is not None:
        previous = getattr(state, "previous_forward", None)
        if previous is None:
            model.__dict__.pop("forward", None)
        else:
            model.__dict__["forward"] = previous
    return model


@contextlib.contextmanager
def torch_only() -> Iterator[None]:
    """Inside the block, models given another runtime run their torch forward (e.g. to compare with it).

    >>> with torch_only():
    ...     reference = model(x)
    """
    _TORCH_ONLY.append(True)
    try:
        yield
    finally:
        _TORCH_ONLY.pop()


def is_torch_only() -> bool:
    """Whether a `torch_only()` block is in force."""
    return bool(_TORCH_ONLY)


def _torch(model: nn.Module, **options: object) -> nn.Module:
    if options:
        raise TypeError(f"the torch runtime takes no options, got {sorted(options)}")
    return model


register_runtime("torch", _torch)
