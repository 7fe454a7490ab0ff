"""`slimkit recipes`: the shipped recipes, one line each."""

from __future__ import annotations

import typer

from slimkit.cli import common


def recipes_cmd() -> None:
    """List the shipped recipes."""
    import yaml

    from slimkit.recipes import shipped

    for name, path in sorted(shipped().items()):
        doc = yaml.safe_load(path.read_text()) or {}
        common.out.print(f"{name:20s} {doc.get('description', '')}")


def register(app: typer.Typer) -> None:
    app.command("recipes")(recipes_cmd)
