"""`slimkit export FILE.slim --onnx OUT.onnx`: ONNX export checked against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli import common, user_ref
from slimkit.export.onnx import export


def export_cmd(model: str = typer.Argument(..., help=f"A .slim file, or {user_ref.MODEL_HELP}"),
               onnx: Path = typer.Option(..., "--onnx", help="Output .onnx file."),
               force: bool = typer.Option(False, "--force", help="Replace --onnx if it exists."),
               as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
               plain_float: bool = typer.Option(False, "--float",
                                                help="Write every layer as decoded fp32 (no int8 ops)."),
               data: str | None = typer.Option(None, "--data", help="Example inputs for a model of your own: "
                                               + user_ref.DATA_HELP),
               ) -> None:
    """Export to ONNX and print ONNX Runtime's parity with slimkit (max abs diff, cosine).

    MODEL or --data given as file.py:NAME or package.module:NAME imports and runs that Python code.

    int8 linears and quantized embeddings stay integer in the graph (MatMulInteger, uint8 Gather),
    weight-only codes, k-means and pruned weights are stored as small codes decoded in the graph,
    unless --float is given; other codecs are written as decoded fp32 weights."""

    inputs = [model, *filter(None, (user_ref.reference_file(r) for r in (model, data or "")))]
    common.check_out_path(onnx, inputs, force, flag="--onnx")
    with common.status(f"loading {model}"):
        net, task = user_ref.model_and_task(model, data, need="exporting" if user_ref.is_reference(model) else None)
    with common.status("exporting and checking in ONNX Runtime"):
        report = export(net, onnx, task=task, integer=not plain_float, overwrite=force)
    if as_json:
        common.emit_json(report)
        return
    layers, coded = report["integer_layers"], report["coded_weights"]
    ints = f", {layers} layer{'s' * (layers != 1)} as integer ops" if layers else ""
    ints += f", {coded} weight{'s' * (coded != 1)} stored as codes" if coded else ""
    common.say(f"wrote {onnx} ({common.fmt_bytes(report['bytes'])}{ints}); ONNX Runtime vs slimkit: "
                     f"max abs diff {report['max_abs_diff']:.3g}, cosine {report['cosine']:.6f}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
