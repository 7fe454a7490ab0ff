"""slimkit: make trained neural networks smaller and faster, and prove it.

>>> import slimkit as sk
>>> model = sk.zoo.load("lenet-300-100")
>>> sk.save(model, "lenet.slim")
>>> sk.evaluate(sk.load("lenet.slim")).score
"""

from slimkit import zoo
from slimkit.core.methods import Family, MethodConfig, apply_, make_config, methods, prune_, quantize_, share_
from slimkit.distillation.api import distill
from slimkit.core.errors import ConfigError, SlimError, SlimFormatError
from slimkit.eval.measure import Measurement, evaluate
from slimkit.io.artifact import load, load_state_dict, read_manifest, save
from slimkit.pipeline.recipes import Recipe, load_recipe, run_recipe
from slimkit.autosearch import search  # optuna loads on first use
from slimkit.zoo.resolve import resolve

__version__ = "0.1.0"


def __getattr__(name: str):
    """Method configs by class name (`sk.MagnitudePruning`, `sk.KMeansSharing`, ...), imported on
    first use so that `import slimkit` stays light."""
    for cls in methods().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")


__all__ = [
    "ConfigError", "Family", "Measurement", "MethodConfig", "Recipe", "SlimError", "SlimFormatError",
    "apply_", "distill", "evaluate", "load", "load_recipe", "load_state_dict", "make_config", "methods", "prune_",
    "quantize_", "read_manifest", "resolve", "run_recipe", "save", "search", "share_", "zoo",
]
