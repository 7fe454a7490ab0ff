"""`slimkit recipes`: the shipped recipes, one line each."""

from __future__ import annotations

import typer
import yaml

from slimkit.cli import common
from slimkit.pipeline.recipes import shipped


def recipes_cmd() -> None:
    """List the shipped recipes."""

    for name, path in sorted(shipped().items()):
        doc = yaml.safe_load(path.read_text()) or {}
        models = doc.get("models") or ["any"]
        text = " ".join(str(doc.get("description", "")).split())
        line = f"{name:18s} ({', '.join(models)}) {text}"
        common.out.print(line if len(line) <= 150 else line[:149] + "…", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("recipes")(recipes_cmd)
