"""`slimkit recipes`: the shipped recipes, one line each."""

from __future__ import annotations

import typer

from slimkit.cli import common
from slimkit.pipeline.recipe_yaml import read_recipe_yaml
from slimkit.pipeline.recipes import shipped


def recipes_cmd() -> None:
    """List the shipped recipes."""

    for name, path in sorted(shipped().items()):
        doc = read_recipe_yaml(path)[0] or {}
        models = [str(m) for m in doc.get("models") or ["any"]]
        text = " ".join(str(doc.get("description", "")).split())
        line = f"{name:18s} ({', '.join(models)}) {text}"
        common.out.print(common.plain(line if len(line) <= 150 else line[:149] + "…"), soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("recipes")(recipes_cmd)
