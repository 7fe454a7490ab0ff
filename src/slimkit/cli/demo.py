"""`slimkit demo`: all four families and a combined pipeline on lenet-300-100, as a table."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli import common
from slimkit.cli.demo_run import run_demo


def demo_cmd(out: Path = typer.Option(Path("slimkit-demo"), "--out", help="Folder for artifacts and tables."),
             model: str = typer.Option("lenet-300-100", "--model", help="Builtin digits model."),
             ) -> None:
    """Run one method of each family and a combined pipeline; print and save the table."""

    common.check_out_folder(out)
    rows = run_demo(out, model, progress=common.info)
    cells = [[r.family, r.method, r.bytes, r.ratio and f"{r.ratio}x", r.score and f"{r.score:.4f}",
              r.delta_pt, r.latency_b1_ms, r.latency_b32_ms, r.note] for r in rows]
    columns = ["family", "method", "bytes", "ratio", "accuracy", "change pt", "ms b1", "ms b32", "note"]
    common.out.print(common.table(f"slimkit demo: builtin:{model} (artifacts and tables in {out}/)", columns, cells))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
