"""`slimkit eval MODEL_OR_FILE [--json]`: score, bytes, ratio, latency."""

from __future__ import annotations

import typer

from slimkit.cli import common, user_ref
from slimkit.eval.measure import evaluate


def measurement_row(m) -> dict:
    return {"bytes": m.bytes, "baseline_bytes": m.baseline_bytes, "ratio": round(m.ratio, 3),
            "score": m.score, "score_name": m.score_name, "params": m.params, "nonzeros": m.nonzeros,
            "latency_ms": m.latency_ms, **m.metrics}


def eval_cmd(model: str = typer.Argument(..., help=user_ref.MODEL_HELP),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
             threads: int = typer.Option(0, "--threads", help="Torch threads for timing (0: default)."),
             trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                               help="Read a pickled .pt/.bin state dict (weights_only)."),
             data: str | None = typer.Option(None, "--data", help=user_ref.DATA_HELP),
             ) -> None:
    """Measure a model or artifact: score, bytes on disk, ratio to fp32, latency (a language model:
    perplexity on held-out English and KL to the original too). Without a task (a model of your own
    with no --data) only bytes and parameters are measured.

    MODEL or --data given as file.py:NAME or package.module:NAME imports and runs that Python code."""

    with common.status(f"loading {model}"):
        net, task = user_ref.model_and_task(model, data, trust_pickle=trust_pickle)
    path = model if model.endswith(".slim") else None
    with common.status("measuring"):
        m = evaluate(net, task, path=path, threads=threads or None)
    row = measurement_row(m)
    if as_json:
        common.emit_json({"model": model, **row})
        return
    columns = ["score_name", "score", *m.metrics, "bytes", "baseline_bytes", "ratio", "params", "nonzeros",
               "latency ms (b1 / b32)"]
    lat = m.latency_ms
    cells = [m.score_name, "-" if m.score is None else f"{m.score:.4f}", *(f"{v:.5g}" for v in m.metrics.values()),
             m.bytes, m.baseline_bytes, f"{m.ratio:.2f}x", m.params, m.nonzeros,
             " / ".join(f"{v:.3f}" for v in lat.values()) or "-"]
    common.out.print(common.table(f"slimkit eval {model}", columns, [cells]))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
