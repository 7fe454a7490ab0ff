"""Recipes: an ordered list of method configs, shipped as YAML or written in Python.

A YAML recipe::

    description: prune to 92% then 5-bit k-means sharing
    models: [lenet-300-100]          # optional: the builtin models it was made for
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
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError
from torch import nn

from slimkit.api import MethodConfig, apply_, methods
from slimkit.context import original_model
from slimkit.errors import SlimError
from slimkit.eval.task import Task


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stages: list[MethodConfig] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # builtin models it was made for (empty: any)


def shipped() -> dict[str, Path]:
    """Shipped recipe names -> their YAML files."""
    folder = resources.files("slimkit") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name, or a YAML file. Errors name the file, stage and key."""
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
    try:
        text = path.read_text()
        doc = yaml.safe_load(text)
        lines = _stage_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SlimError(f"{path}:{line} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_recipe(doc, str(path), path.stem, lines)


def _stage_lines(text: str) -> dict[tuple[int, str], int]:
    """(stage index, key) -> 1-based line of that key in the YAML text ("" = the stage itself)."""
    out: dict[tuple[int, str], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        if key.value == "stages" and isinstance(value, yaml.SequenceNode):
            for i, stage in enumerate(value.value):
                out[(i, "")] = stage.start_mark.line + 1
                if isinstance(stage, yaml.MappingNode):
                    for k, _ in stage.value:
                        out[(i, str(k.value))] = k.start_mark.line + 1
    return out


def parse_recipe(doc: object, where: str, name: str, lines: dict[tuple[int, str], int] | None = None) -> Recipe:
    """Validate a recipe document; `lines` (from the YAML text) puts line numbers into errors."""
    lines = lines or {}

    def at(i: int, key: str = "") -> str:
        line = lines.get((i, key)) or lines.get((i, ""))
        return f"{where}:{line}" if line else where

    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise SlimError(f"{where}: a recipe needs a non-empty 'stages' list")
    extra = set(doc) - {"description", "stages", "models"}
    if extra:
        raise SlimError(f"{where}: unknown recipe key {sorted(extra)[0]!r} (expected description, stages)")
    known = methods()
    stages = []
    for i, stage in enumerate(doc["stages"]):
        if not isinstance(stage, dict) or "method" not in stage:
            raise SlimError(f"{at(i)}: stage {i + 1} needs a 'method' key")
        options = dict(stage)
        method = options.pop("method")
        if method not in known:
            raise SlimError(f"{at(i, 'method')}: stage {i + 1}: method {method!r} is not implemented "
                            f"(available: {', '.join(known) or 'none yet'})")
        try:
            stages.append(known[method](**options))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or method
            msg = str(err["msg"]).removeprefix("Value error, ")
            first = str(err["loc"][0]) if err["loc"] else ""
            raise SlimError(f"{at(i, first)}: stage {i + 1} ({method}): {key}: {msg}") from None
        except (ValueError, TypeError, SlimError) as exc:
            bad = next((k for k in options if f"{k}" in str(exc)), "")
            raise SlimError(f"{at(i, bad)}: stage {i + 1} ({method}): {exc}") from None
    models = doc.get("models", [])
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise SlimError(f"{where}: 'models' must be a list of builtin model names")
    return Recipe(name=name, description=" ".join(str(doc.get("description", "")).split()), stages=stages,
                  models=[m.removeprefix("builtin:") for m in models])


def run_recipe(model: nn.Module, recipe: Recipe, task: Task | None = None,
               on_stage: Callable[[int, MethodConfig, nn.Module], None] | None = None) -> nn.Module:
    """Apply the stages in order; `on_stage(i, config, model)` is called after each one.

    A copy of the input model is kept as the teacher of `recover` stages, if there are any."""
    with original_model(keep_original(model, recipe)):
        for i, config in enumerate(recipe.stages):
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
