"""Import every module that registers something (codecs, runtime modules, methods, edit ops).

Registration happens at import time; `load_all()` makes sure a file written with any codec or
runtime module can be read, without making `import slimkit` heavy.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

PACKAGES = ("slimkit.io", "slimkit.export", "slimkit.nn", "slimkit.surgery", "slimkit.quantization", "slimkit.pruning",
            "slimkit.sharing", "slimkit.distillation", "slimkit.stream")


@lru_cache(maxsize=1)
def load_all() -> None:
    """Import all submodules of the registering packages (once)."""
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")
