"""Optional heavy dependencies (the extras `slimkit[hf]`, `[onnx]`, `[search]`, `[plots]`): checked
where a feature starts, so a missing one is a one-line error naming the extra to install.

>>> require("optuna", "search")          # SlimError when optuna is not installed
>>> plt = pyplot()                        # matplotlib's pyplot on the Agg backend
"""

from __future__ import annotations

import importlib.util
import io
from types import ModuleType

from slimkit.core.errors import SlimError


def require(module: str, extra: str, feature: str = "") -> None:
    """Raise a one-line SlimError when `module` cannot be imported, naming the extra that provides it."""
    if importlib.util.find_spec(module) is None:
        what = f"{feature} needs" if feature else "this needs"
        raise SlimError(f"{what} the optional package {module!r}: pip install 'slimkit[{extra}]'")


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend (the `plots` extra)."""
    require("matplotlib", "plots", "plotting")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int) -> bytes:
    """A matplotlib figure rendered as PNG bytes (written with an atomic write, never in place)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
