"""Recipes: an ordered list of method configs, shipped as YAML or written in Python.

A YAML recipe::

    description: prune to 92% then 5-bit k-means sharing
    models: [lenet-300-100]          # optional: the builtin models it was made for
    requires: [slimkit-corpora]      # optional: distributions it needs besides slimkit
    max_drop: 1.0                    # optional: points of score `compress` may lose (default 1)
    stages:
      - method: magnitude
        sparsity: 0.92
      - method: kmeans
        bits: 5

>>> recipe = load_recipe("deep-compression")       # shipped name, or a path to a .yaml file
>>> model = run_recipe(model, recipe, task)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

from pydantic import ValidationError
from torch import nn

from slimkit.core.context import original_model
from slimkit.core.errors import ConfigError, SlimError
from slimkit.core.methods import MethodConfig, apply_, methods
from slimkit.core.original import remember_original
from slimkit.core.task import Task
from slimkit.core.text import clean
from slimkit.core.user_task import Metric, task_from
from slimkit.pipeline.recipe_yaml import read_recipe_yaml


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stages: list[MethodConfig] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # builtin models it was made for (empty: any)
    requires: list[str] = field(default_factory=list)  # distributions it needs besides slimkit's own
    max_drop: float | None = None  # points of score `compress` may lose (None: its default, 1 point or 1%)


# Where a required distribution comes from when it is not on PyPI (default: `pip install NAME`).
INSTALL_HINTS: dict[str, str] = {
    "slimkit-corpora": "pip install ./data/slimkit-corpora from a slimkit checkout; `make install` installs it",
}
_DIST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
MAX_STAGES = 64   # the longest shipped recipe has 2; 1,000 stages took over 10 s to check


def shipped() -> dict[str, Path]:
    """Shipped recipe names -> their YAML files."""
    folder = resources.files("slimkit.pipeline") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_recipe(name_or_path: str, check_requires: bool = True) -> Recipe:
    """A shipped recipe by name, or a YAML file. Errors name the file, stage and key.

    With `check_requires` (the default), a recipe whose `requires:` names a distribution that is
    not installed is refused with a one-line `SlimError` saying what to install; estimates that
    never run the recipe pass `check_requires=False`.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SlimError(f"recipe file not found: {name_or_path}")
    else:
        known = shipped()
        if name_or_path not in known:
            raise SlimError(f"unknown recipe {name_or_path!r} (shipped: {', '.join(sorted(known))}; "
                            "or give a .yaml file)")
        path = known[name_or_path]
    doc, lines = read_recipe_yaml(path)
    recipe = parse_recipe(doc, str(path), path.stem, lines)
    if check_requires:
        require(recipe, str(path))
    return recipe


def missing_requirements(recipe: Recipe) -> list[str]:
    """The distributions in `recipe.requires` that are not installed (by `importlib.metadata`)."""
    missing = []
    for name in recipe.requires:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def require(recipe: Recipe, where: str | None = None) -> None:
    """Raise a one-line `SlimError` if a distribution `recipe` requires is not installed."""
    missing = missing_requirements(recipe)
    if missing:
        hints = "; ".join(INSTALL_HINTS.get(name, f"pip install {name}") for name in missing)
        raise SlimError(f"{where or recipe.name}: recipe {recipe.name!r} needs {', '.join(missing)}, "
                        f"which is not installed ({hints})")


def parse_recipe(doc: object, where: str, name: str, lines: dict[tuple[int, str], int] | None = None) -> Recipe:
    """Validate a recipe document; `lines` (from the YAML text) puts line numbers into errors."""
    lines = lines or {}

    def at(i: int, key: str = "") -> str:
        line = lines.get((i, key)) or lines.get((i, ""))
        return f"{where}:{line}" if line else where

    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise ConfigError(f"{where}: a recipe needs a non-empty 'stages' list")
    if len(doc["stages"]) > MAX_STAGES:   # each stage is checked and sized before any work: bound that work
        raise ConfigError(f"{where}: a recipe may have at most {MAX_STAGES} stages, this one has {len(doc['stages'])}")
    extra = sorted(repr(k) for k in set(doc) - {"description", "stages", "models", "requires", "max_drop"})
    if extra:
        raise ConfigError(f"{where}: unknown recipe key {extra[0]} "
                          "(expected description, stages, models, requires, max_drop)")
    max_drop = doc.get("max_drop")
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, int | float)
                                 or not 0 <= max_drop < float("inf")):
        raise ConfigError(f"{where}: 'max_drop' must be a number of points >= 0, got {max_drop!r}"[:200])
    description = doc.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string, got {_kind(description)}")
    known = methods()
    stages = [_stage(i, stage, known, at) for i, stage in enumerate(doc["stages"])]
    models = doc.get("models", [])
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{where}: 'models' must be a list of builtin model names")
    requires = doc.get("requires", [])
    if isinstance(requires, str):
        requires = [requires]
    if not isinstance(requires, list) or not all(isinstance(r, str) and _DIST_NAME.fullmatch(r) for r in requires):
        raise ConfigError(f"{where}: 'requires' must be a list of distribution names (e.g. [slimkit-corpora])")
    return Recipe(name=name, description=" ".join(description.split()), stages=stages,
                  models=[m.removeprefix("builtin:") for m in models], requires=list(requires),
                  max_drop=None if max_drop is None else float(max_drop))


def _kind(value: object) -> str:
    """A short name of a YAML value's type for messages: "a list", "an int", "a mapping"."""
    kinds = {list: "a list", dict: "a mapping", bool: "a bool", int: "an int", float: "a float", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


def _stage(i: int, stage: object, known: dict[str, type[MethodConfig]], at: Callable[..., str]) -> MethodConfig:
    """Stage `i` of a recipe document as a config; a one-line `ConfigError` naming the line and key."""
    if not isinstance(stage, dict) or "method" not in stage:
        raise ConfigError(f"{at(i)}: stage {i + 1} needs a 'method' key")
    options = dict(stage)
    method = options.pop("method")
    if not isinstance(method, str):
        raise ConfigError(f"{at(i, 'method')}: stage {i + 1}: 'method' must be a method name, got {_kind(method)}")
    if method not in known:
        raise ConfigError(f"{at(i, 'method')}: stage {i + 1}: method {method!r} is not implemented "
                          f"(available: {', '.join(known) or 'none yet'})")
    odd = next((k for k in options if not isinstance(k, str)), None)
    if odd is not None:
        raise ConfigError(f"{at(i)}: stage {i + 1} ({method}): option names must be words, got {odd!r}")
    try:
        return known[method](**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or method
        msg = clean(str(err["msg"]).removeprefix("Value error, "))
        first = str(err["loc"][0]) if err["loc"] else ""
        raise ConfigError(f"{at(i, first)}: stage {i + 1} ({method}): {key}: {msg}") from None
    except (ValueError, TypeError, SlimError) as exc:
        bad = next((k for k in options if f"{k}" in str(exc)), "")
        raise ConfigError(f"{at(i, bad)}: stage {i + 1} ({method}): {clean(exc)}") from None


def run_recipe(model: nn.Module, recipe: Recipe, task: Task | None = None,
               on_stage: Callable[[int, MethodConfig, nn.Module], None] | None = None,
               before_stage: Callable[[int, MethodConfig], MethodConfig] | None = None, *,
               data: object = None, metric: Metric | None = None) -> nn.Module:
    """Apply the stages in order; `on_stage(i, config, model)` is called after each one.

    The stages get `task`, or the task made from `data` / `metric` (a DataLoader or batches and a
    callable `metric(model) -> float`: `slimkit.core.user_task.task_from`), else the model's own.
    `before_stage(i, config)`, if given, is called before stage `i` (0-based) and returns the config
    to apply (e.g. with its time limit cut to the time left). Either callback may raise to stop the
    run. This is the one loop that applies a recipe: the pipeline runner, the CLI and the search
    all run their stages through it. A copy of the input model is kept as the teacher of `recover`
    stages, if there are any.

    >>> model = run_recipe(model, load_recipe("deep-compression"), task,
    ...                    on_stage=lambda i, config, _m: print(i, config.method))
    >>> model = run_recipe(model, load_recipe("int8"), data=loader)
    """
    if task is not None and (data is not None or metric is not None):
        raise SlimError("give either task or data= / metric=, not both")
    if task is None:
        task = task_from(data, metric, model)
    remember_original(model)
    with original_model(keep_original(model, recipe)):
        for i, config in enumerate(recipe.stages):
            if before_stage is not None:
                config = before_stage(i, config)
            model = apply_(model, config, task)
            if on_stage is not None:
                on_stage(i, config, model)
    return model


def keep_original(model: nn.Module, recipe: Recipe) -> nn.Module | None:
    """A frozen copy of `model` when a stage of `recipe` needs the uncompressed model."""
    if not any(getattr(config, "needs_original", False) for config in recipe.stages):
        return None
    original = copy.deepcopy(model).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    return original
