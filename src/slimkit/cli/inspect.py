"""`slimkit inspect MODEL_OR_FILE`: the per-layer table (type, shape, params, nonzeros, bytes, encoding)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slimkit.cli import common


def inspect_cmd(model: str = typer.Argument(..., help="builtin:NAME, a .slim file, a HF folder or .safetensors"),
                as_json: bool = typer.Option(False, "--json", help="Print the rows as one JSON object."),
                apoz: bool = typer.Option(False, "--apoz", help="Measure per-layer APoZ on the model's data."),
                plot: Path | None = typer.Option(None, "--plot", help="Write PNG histograms (and APoZ) here."),
                trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                                  help="Read a pickled .pt/.bin state dict (weights_only)."),
                ) -> None:
    """Show where a model's bytes are, layer by layer."""
    from slimkit.eval.layers import layer_table
    from slimkit.zoo.resolve import resolve

    with common.status(f"loading {model}"):
        net = resolve(model, trust_pickle=trust_pickle)
    rows = layer_table(net)
    apoz_rows = _apoz_rows(net) if apoz else []
    if plot is not None:
        _plots(net, apoz_rows, plot)
    if as_json:
        common.emit_json({"model": model, "layers": rows, "apoz": apoz_rows})
        return
    if apoz_rows:
        _print_apoz(apoz_rows)
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


def _apoz_rows(net) -> list[dict]:
    from slimkit.errors import SlimError
    from slimkit.eval.measure import task_for
    from slimkit.prune.report import apoz_report

    task = task_for(net)
    if task is None:
        raise SlimError("--apoz needs data: use a builtin model or a .slim file made from one")
    with common.status("measuring APoZ"):
        return apoz_report(net, task)


def _print_apoz(rows: list[dict]) -> None:
    table = Table(title="APoZ (average percentage of zeros after ReLU, Network Trimming)")
    for col in ("layer", "neurons", "APoZ mean", "APoZ std", "above mean+std", "never fire"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["layer"], str(r["channels"]), f"{r['apoz_mean']:.3f}", f"{r['apoz_std']:.3f}",
                      str(r["above_mean_std"]), str(r["dead"]))
    common.out.print(table)


def _plots(net, apoz_rows: list[dict], folder: Path) -> None:
    from slimkit.eval.plots import plot_apoz, plot_histograms
    from slimkit.prune.report import weight_histograms

    paths = plot_histograms(weight_histograms(net), folder)
    apoz_path = plot_apoz(apoz_rows, folder)
    common.info(f"wrote {len(paths) + (apoz_path is not None)} plots to {folder}/")


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
