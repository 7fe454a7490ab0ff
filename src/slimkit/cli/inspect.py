"""`slimkit inspect MODEL_OR_FILE`: the per-layer table (type, shape, params, nonzeros, bytes, encoding)."""

from __future__ import annotations

import typer
from rich.table import Table

from slimkit.cli import common


def inspect_cmd(model: str = typer.Argument(..., help="builtin:NAME, a .slim file, a HF folder or .safetensors"),
                as_json: bool = typer.Option(False, "--json", help="Print the rows as one JSON object."),
                ) -> None:
    """Show where a model's bytes are, layer by layer."""
    from slimkit.eval.layers import layer_table
    from slimkit.zoo.resolve import resolve

    with common.status(f"loading {model}"):
        net = resolve(model)
    rows = layer_table(net)
    if as_json:
        common.emit_json({"model": model, "layers": rows})
        return
    table = Table(title=f"slimkit inspect {model}")
    for col in ("layer", "type", "shape", "params", "nonzeros", "bytes", "encoding"):
        table.add_column(col, justify="right" if col in ("params", "nonzeros", "bytes") else "left")
    for r in rows:
        table.add_row(r["name"], r["type"], "x".join(map(str, r["shape"])), str(r["params"]),
                      str(r["nonzeros"]), str(r["bytes"]), r["encoding"])
    total = sum(r["bytes"] for r in rows)
    table.add_row("total", "", "", str(sum(r["params"] for r in rows)),
                  str(sum(r["nonzeros"] for r in rows)), str(total), "")
    common.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
