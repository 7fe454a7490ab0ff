"""slimkit: make trained neural networks smaller and faster, and prove it.

>>> import slimkit as sk
>>> model = sk.zoo.load("lenet-300-100")
>>> sk.prune_(model, sk.MagnitudePruningConfig(sparsity=0.9))
>>> sk.save(model, "lenet.slim")
>>> sk.evaluate(sk.load("lenet.slim")).score
>>> model, result = sk.compress(my_model, "int8", data=loader, metric=my_accuracy, out="mine.slim")

This file is the roof: it gathers the public API from the layers below (see DESIGN.md); importing
the packages here is also what registers every method, codec, runtime module and model builder.
No module of slimkit imports this one.
"""

import importlib
import warnings
from importlib.metadata import entry_points

from slimkit import export, stream, zoo
from slimkit.autosearch import search  # optuna loads on first use
from slimkit.core.errors import ConfigError, SlimError, SlimFormatError
from slimkit.core.methods import Family, MethodConfig, apply_, make_config, methods, prune_, quantize_, share_
from slimkit.distillation.api import DistillConfig, distill
from slimkit.distillation.recovery import RecoveryConfig
from slimkit.eval.measure import Measurement, evaluate
from slimkit.export.runtime import runtime_report  # registers the "onnxruntime" and "auto" runtimes
from slimkit.io.artifact import load, load_state_dict, read_manifest, save
from slimkit.pipeline.compress import compress
from slimkit.pipeline.recipes import Recipe, load_recipe, run_recipe
from slimkit.pruning.api import (
    APoZPruning,
    APoZPruningConfig,
    MagnitudePruning,
    MagnitudePruningConfig,
    NMPruning,
    NMPruningConfig,
    NormPruning,
    NormPruningConfig,
    StructuredPruning,
    StructuredPruningConfig,
)
from slimkit.pruning.calibrated import SparseGPTConfig, WandaConfig
from slimkit.quantization.api import GPTQ, GPTQConfig, Int8, Int8Config, WeightOnly, WeightOnlyConfig
from slimkit.quantization.qat import QAT, QATConfig
from slimkit.quantization.scaled import AWQConfig, SmoothQuantConfig
from slimkit.quantization.static import Int8Static, Int8StaticConfig
from slimkit.sharing.api import Hashed, HashedConfig, KMeansConfig, KMeansSharing, LowRank, LowRankConfig
from slimkit.sharing.apply_deep_kmeans import DeepKMeans, DeepKMeansConfig
from slimkit.zoo.resolve import resolve

__version__ = "0.1.0"
PLUGIN_GROUP = "slimkit.plugins"


def load_plugins() -> list[str]:
    """Import the modules installed packages declare under the `slimkit.plugins` entry-point group
    (e.g. `[project.entry-points."slimkit.plugins"] toy = "my_pkg.toy_method"`), so the methods, codecs
    and model builders they register work everywhere, the CLI included. Returns their names."""
    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as exc:   # a broken plugin must not break slimkit: say which one, once
            warnings.warn(f"slimkit plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
            continue
        loaded.append(ep.name)
    return loaded


load_plugins()

__all__ = [
    # verbs, the registry, plugins
    "Family", "MethodConfig", "apply_", "distill", "load_plugins", "make_config", "methods", "prune_",
    "quantize_", "share_",
    # method configs
    "APoZPruningConfig", "AWQConfig", "DeepKMeansConfig", "DistillConfig", "GPTQConfig", "HashedConfig",
    "Int8Config", "Int8StaticConfig", "KMeansConfig", "LowRankConfig", "MagnitudePruningConfig", "NMPruningConfig",
    "NormPruningConfig", "QATConfig", "RecoveryConfig", "SmoothQuantConfig", "SparseGPTConfig",
    "StructuredPruningConfig", "WandaConfig", "WeightOnlyConfig",
    # files, models, measurement, recipes, search
    "Measurement", "Recipe", "compress", "evaluate", "export", "load", "load_recipe", "load_state_dict",
    "read_manifest", "resolve", "run_recipe", "runtime_report", "save", "search", "stream", "zoo",
    # errors
    "ConfigError", "SlimError", "SlimFormatError",
    # names before the `<Method>Config` scheme, kept for existing code (CHANGELOG.md)
    "APoZPruning", "DeepKMeans", "GPTQ", "Hashed", "Int8", "Int8Static", "KMeansSharing", "LowRank",
    "MagnitudePruning", "NMPruning", "NormPruning", "QAT", "StructuredPruning", "WeightOnly",
]
