"""`slimkit compress MODEL --recipe NAME|FILE.yaml --out FILE.slim [--json]`."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli import common
from slimkit.cli.compress_stream import layerwise_cmd, stream_cmd
from slimkit.core.provenance import base_of, task_for
from slimkit.dist.collectives import init, is_main
from slimkit.eval.measure import evaluate
from slimkit.io.artifact import save
from slimkit.pipeline.preflight import check_recipe
from slimkit.pipeline.recipes import load_recipe, run_recipe
from slimkit.pipeline.runner import run_pipeline
from slimkit.stream.route import route
from slimkit.zoo.resolve import resolve


def compress_cmd(model: str = typer.Argument(..., help="builtin:NAME, a HF folder or .safetensors"),
                 recipe: str = typer.Option(..., "--recipe", "-r", help="Shipped recipe name or a .yaml file."),
                 out: Path = typer.Option(..., "--out", "-o", help="Output .slim file."),
                 force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
                 keep_stages: bool = typer.Option(False, "--keep-stages",
                                                  help="Save and measure every stage in OUT.stages/."),
                 trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                                   help="Read a pickled .pt/.bin state dict (weights_only)."),
                 stream: bool = typer.Option(False, "--stream", help="Stream from disk: weight-only recipes tensor by "
                                             "tensor, gptq on a HF folder block by block."),
                 ) -> None:
    """Apply a recipe, evaluate before and after, save the artifact."""

    common.check_out_path(out, [model, recipe], force)   # before any work; the rename checks again

    how = route(model, recipe, stream)
    if how == "tensors":  # a bare checkpoint (or --stream): weight-only, tensor by tensor
        return stream_cmd(model, recipe, out, as_json, keep_stages, overwrite=force)
    if how == "layerwise":  # gptq on a HF folder, one block at a time from disk
        return layerwise_cmd(model, recipe, out, as_json, keep_stages, overwrite=force)
    plan = load_recipe(recipe)

    init()  # under torchrun: calibration and training are split across ranks; rank 0 writes
    with common.status(f"loading {model}"):
        net = resolve(model, trust_pickle=trust_pickle)
    task = task_for(net)
    name = base_of(net).get("name")
    if plan.models and name not in plan.models:
        common.warn(f"recipe {plan.name} was made for {', '.join(plan.models)}, not {name or 'this model'}")
    check_recipe(net, plan, task)   # a stage that cannot apply: one line now, not after measuring
    with common.status("measuring the original"):
        before = evaluate(net, task)

    def on_stage(i, config, _model):
        common.info(f"stage {i + 1}/{len(plan.stages)} done: {config.method}")

    with common.status(f"compressing with {plan.name} ({len(plan.stages)} stages)"):
        if keep_stages:
            folder = out.with_name(out.name + ".stages")
            try:
                net, _ = run_pipeline(net, plan, task, folder)
            finally:
                common.info(f"stage artifacts and stages.json in {folder}/")
        else:
            net = run_recipe(net, plan, task, on_stage=on_stage)
    if not is_main():
        return
    save(net, out, info={"recipe": plan.name, "source": model}, overwrite=force)
    with common.status("measuring the result"):
        after = evaluate(net, task, path=out)
    result = {"out": str(out), "bytes": after.bytes, "baseline_bytes": after.baseline_bytes,
              "ratio": round(after.ratio, 3), "score": after.score, "baseline_score": before.score,
              "latency_ms": after.latency_ms, "baseline_latency_ms": before.latency_ms}
    if as_json:
        common.emit_json(result)
        return
    delta = "" if after.score is None or before.score is None else \
        f", {after.score_name} {before.score:.4f} -> {after.score:.4f}"
    common.say(f"wrote {out}: {common.fmt_bytes(after.bytes)} ({after.ratio:.1f}x smaller than "
               f"fp32 {common.fmt_bytes(after.baseline_bytes)}){delta}")


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)
