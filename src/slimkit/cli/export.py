"""`slimkit export FILE.slim --onnx OUT.onnx`: ONNX export checked against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli import common


def export_cmd(model: str = typer.Argument(..., help="A .slim file (or builtin:NAME, HF folder)"),
               onnx: Path = typer.Option(..., "--onnx", help="Output .onnx file."),
               force: bool = typer.Option(False, "--force", help="Replace --onnx if it exists."),
               as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
               ) -> None:
    """Export to ONNX and print ONNX Runtime's parity with slimkit (max abs diff, cosine)."""
    from slimkit.io.onnx import export
    from slimkit.zoo.resolve import resolve

    common.check_out_path(onnx, [model], force)
    with common.status(f"loading {model}"):
        net = resolve(model)
    with common.status("exporting and checking in ONNX Runtime"):
        report = export(net, onnx)
    if as_json:
        common.emit_json(report)
        return
    common.out.print(f"wrote {onnx} ({common.fmt_bytes(report['bytes'])}); ONNX Runtime vs slimkit: "
                     f"max abs diff {report['max_abs_diff']:.3g}, cosine {report['cosine']:.6f}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
