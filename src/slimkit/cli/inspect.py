"""`slimkit inspect MODEL_OR_FILE`: the per-layer table (type, shape, params, nonzeros, bytes, encoding)
and the pre-flight: what each family can do to each layer, the coupled groups of structured
pruning, and the expected size under each shipped recipe (estimated, nothing is run)."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli import common, user_ref
from slimkit.core.errors import SlimError
from slimkit.core.provenance import base_of
from slimkit.eval.layers import layer_table
from slimkit.eval.plots import plot_histograms
from slimkit.pipeline.preflight import preflight
from slimkit.pipeline.recipes import shipped
from slimkit.pruning.report import apoz_report, plot_apoz, weight_histograms
from slimkit.stream.estimate import checkpoint_estimates, items_of


def inspect_cmd(model: str = typer.Argument(..., help=user_ref.MODEL_HELP),
                as_json: bool = typer.Option(False, "--json", help="Print the rows as one JSON object."),
                apoz: bool = typer.Option(False, "--apoz", help="Measure per-layer APoZ on the model's data."),
                plot: Path | None = typer.Option(None, "--plot", help="Write PNG histograms (and APoZ) here."),
                trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                                  help="Read a pickled .pt/.bin state dict (weights_only)."),
                recipe: list[str] | None = typer.Option(None, "--recipe",
                                                        help="Estimate only this recipe (repeatable)."),
                preflight: bool = typer.Option(True, "--preflight/--no-preflight",
                                               help="Add what each family can do and the recipe size estimates."),
                data: str | None = typer.Option(None, "--data", help=user_ref.DATA_HELP),
                ) -> None:
    """Show where a model's bytes are, layer by layer, and what each recipe would make of it.

    MODEL or --data given as file.py:NAME or package.module:NAME imports and runs that Python code."""

    if plot is not None:
        common.check_out_folder(plot, "--plot")
    with common.status(f"loading {model}"):
        net, task = user_ref.model_and_task(model, data, trust_pickle=trust_pickle)
    rows = layer_table(net)
    apoz_rows = _apoz_rows(net, task) if apoz else []
    if plot is not None:
        _plots(net, apoz_rows, plot)
    report = _preflight(net, task, recipe) if preflight else None
    if as_json:
        common.emit_json({"model": model, "layers": rows, "apoz": apoz_rows, "preflight": report})
        return
    if apoz_rows:
        _print_apoz(apoz_rows)
    cells = [[r["name"], r["type"], "x".join(map(str, r["shape"])), r["params"], r["nonzeros"], r["bytes"],
              r["encoding"]] for r in rows]
    cells.append(["total", "", "", sum(r["params"] for r in rows), sum(r["nonzeros"] for r in rows),
                  sum(r["bytes"] for r in rows), ""])
    right = {"justify": "right"}
    common.out.print(common.table(f"slimkit inspect {model}",
                                  ["layer", "type", "shape", "params", "nonzeros", "bytes", "encoding"], cells,
                                  params=right, nonzeros=right, bytes=right))
    if report is not None:
        _print_preflight(report)


def _preflight(net, task, recipes: list[str] | None) -> dict:
    with common.status("pre-flight: tracing groups, estimating recipe sizes"):
        report = preflight(net, task, recipes or None)
        if base_of(net).get("kind") == "weights":   # a bare checkpoint: what `compress` does, tensor by tensor
            report["recipes"] = checkpoint_estimates(items_of(net.state_dict()), recipes or sorted(shipped()),
                                                     report["baseline_bytes"], "this checkpoint")
        return report


def _apoz_rows(net, task) -> list[dict]:
    if task is None:
        raise SlimError("--apoz needs data: a builtin model, a .slim file made from one, or --data file.py:NAME")
    with common.status("measuring APoZ"):
        return apoz_report(net, task)


def _print_apoz(rows: list[dict]) -> None:
    cells = [[r["layer"], r["channels"], f"{r['apoz_mean']:.3f}", f"{r['apoz_std']:.3f}", r["above_mean_std"],
              r["dead"]] for r in rows]
    common.out.print(common.table("APoZ (average percentage of zeros after ReLU, Network Trimming)",
                                  ["layer", "neurons", "APoZ mean", "APoZ std", "above mean+std", "never fire"],
                                  cells))


def _plots(net, apoz_rows: list[dict], folder: Path) -> None:
    paths = plot_histograms(weight_histograms(net), folder)
    apoz_path = plot_apoz(apoz_rows, folder)
    common.info(f"wrote {len(paths) + (apoz_path is not None)} plots to {folder}/")


def _print_preflight(report: dict) -> None:
    fold = {"overflow": "fold"}
    cells = [[r["layer"], r["type"],
              r["quantization"] if not r["float_reason"] else f"{r['quantization']}: {r['float_reason']}",
              r["pruning"], r["sharing"]] for r in report["capabilities"]]
    columns = ["layer", "type", "quantization", "pruning", "sharing"]
    common.out.print(common.table("What each family can do (pre-flight)", columns, cells,
                                  **dict.fromkeys(columns, fold)))
    groups = report["groups"]
    common.out.print(common.plain("Structured pruning: coupled groups (cut together)", "bold"))
    for g in groups["groups"]:
        relu = f", ReLU after {g['relu_after']}" if g["relu_after"] else ""
        common.say(f"  {g['text']}  ({g['channels']} channels{relu})")
    for name, why in groups["unprunable"].items():
        common.say(f"  {name}: not prunable ({why})")
    if groups["blocks"]:
        common.say(f"  transformer blocks (heads and FFN neurons): {', '.join(groups['blocks'])}")
    if groups["error"] and not groups["blocks"]:
        common.say(f"  not traced: {groups['error']}")
    base = report["baseline_bytes"]
    cells = []
    for r in report["recipes"]:
        made_for = ", ".join(r["made_for"]) or "any"
        if r["bytes"] is None:
            cells.append([r["recipe"], made_for, "-", "-", f"cannot apply: {r['error']}"])
            continue
        approx = "" if r["exact"] else "~"
        basis = "; ".join(f"{s['method']}: {s['basis']}" for s in r["stages"])
        cells.append([r["recipe"], made_for, approx + common.fmt_bytes(r["bytes"]), f"{r['ratio']:.1f}x", basis])
    columns = ["recipe", "made for", "estimated size", "smaller", "basis / why not"]
    options = {col: {"overflow": "fold", "justify": "right" if col in ("estimated size", "smaller") else "left"}
               for col in columns}
    common.out.print(common.table(f"Expected size under each shipped recipe (ESTIMATES from shapes and configs; "
                                  f"nothing was trained or run; the file now: {common.fmt_bytes(base)})",
                                  columns, cells, **options))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
