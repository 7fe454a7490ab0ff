"""`slimkit compress MODEL --recipe NAME|FILE.yaml --out FILE.slim [--json]`."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli import common, user_ref
from slimkit.cli.compress_stream import layerwise_cmd, pickled_cmd, stream_cmd
from slimkit.core.errors import SlimError
from slimkit.core.provenance import base_of
from slimkit.dist.collectives import init
from slimkit.pipeline.compress import EXIT_OVER_BUDGET, RunOptions, compress, over_budget_line
from slimkit.pipeline.preflight import check_recipe
from slimkit.pipeline.recipes import load_recipe
from slimkit.stream.route import route
from slimkit.zoo.resolve import PICKLE_SUFFIXES, resolve


def compress_cmd(model: str = typer.Argument(..., help=user_ref.MODEL_HELP),
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
                 max_drop: float | None = typer.Option(None, "--max-drop", help="Score the result may lose, in points "
                                                       "(default: the recipe's max_drop, else 1); more exits with 3."),
                 data: str | None = typer.Option(None, "--data", help=user_ref.DATA_HELP),
                 ) -> None:
    """Apply a recipe, evaluate before and after, save the artifact.

    MODEL or --data given as file.py:NAME or package.module:NAME imports and runs that Python code.

    Exit codes: 0 written, within --max-drop; 2 a bad input, recipe or option (one line);
    3 written, but the score dropped more than --max-drop (a warning line says by how much)."""

    inputs = [model, recipe, *filter(None, (user_ref.reference_file(r) for r in (model, data or "")))]
    common.check_out_path(out, inputs, force)   # before any work; the rename checks again

    if stream and user_ref.is_reference(model):
        raise SlimError(f"--stream reads a checkpoint or Hugging Face folder from disk; {model} is Python code "
                        "that builds the model in memory: drop --stream")
    if stream and data is not None:
        raise SlimError("--stream calibrates on the model's own data; --data runs in memory: drop one of them")
    if user_ref.is_reference(model) or data is not None:   # your model and/or your data: in memory
        return _in_memory(model, data, recipe, out, force, as_json, keep_stages, trust_pickle, max_drop)
    if Path(model).suffix in PICKLE_SUFFIXES and Path(model).is_file():   # a bare state dict: tensor by tensor
        with common.status(f"loading {model}"):
            weights = resolve(model, trust_pickle=trust_pickle)             # refused without --trust-pickle
        return pickled_cmd(weights, model, recipe, out, as_json, keep_stages, overwrite=force, max_drop=max_drop)
    how = route(model, recipe, stream)
    if how == "tensors":  # a bare checkpoint (or --stream): weight-only, tensor by tensor
        return stream_cmd(model, recipe, out, as_json, keep_stages, overwrite=force, max_drop=max_drop)
    if how == "layerwise":  # gptq on a HF folder, one block at a time from disk
        return layerwise_cmd(model, recipe, out, as_json, keep_stages, overwrite=force, max_drop=max_drop)
    return _in_memory(model, data, recipe, out, force, as_json, keep_stages, trust_pickle, max_drop)


def _in_memory(model: str, data: str | None, recipe: str, out: Path, force: bool, as_json: bool,
               keep_stages: bool, trust_pickle: bool, max_drop: float | None) -> None:
    """`sk.compress` on the model in memory, printed (one JSON line with --json); exit 3 over budget."""
    plan = load_recipe(recipe)

    init()  # under torchrun: calibration and training are split across ranks; rank 0 writes
    with common.status(f"loading {model}"):
        net, task = user_ref.model_and_task(model, data, trust_pickle=trust_pickle, need="compressing")
    name = base_of(net).get("name")
    if plan.models and name not in plan.models:
        common.warn(f"recipe {plan.name} was made for {', '.join(plan.models)}, not {name or 'this model'}")
    check_recipe(net, plan, task)   # a stage that cannot apply: one line now, not after measuring
    folder = out.with_name(out.name + ".stages") if keep_stages else None

    def on_stage(i, config, _model):
        common.info(f"stage {i + 1}/{len(plan.stages)} done: {config.method}")

    options = RunOptions(on_stage=on_stage, stages_folder=folder, info={"source": model}, overwrite=force,
                         status=common.status)
    try:
        net, result = compress(net, plan, task, out=out, max_drop=max_drop, inplace=True, options=options)
    finally:
        if folder is not None:
            common.info(f"stage artifacts and stages.json in {folder}/")
    if not result:   # not rank 0 under torchrun: rank 0 writes and measures
        return
    if as_json:
        common.emit_json(result)
    else:
        delta = "" if result["score"] is None or result["baseline_score"] is None else \
            f", {result['score_name']} {result['baseline_score']:.4f} -> {result['score']:.4f}"
        delta += "".join(f", {k} {result['baseline_metrics'].get(k, float('nan')):.5g} -> {v:.5g}"
                         for k, v in result.get("metrics", {}).items())   # a language model: perplexity, kl
        common.say(f"wrote {out}: {common.fmt_bytes(result['bytes'])} ({result['ratio']:.1f}x smaller than "
                   f"fp32 {common.fmt_bytes(result['baseline_bytes'])}){delta}")
    if not result["within_budget"]:
        common.warn(over_budget_line(result))
        raise SystemExit(EXIT_OVER_BUDGET)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)
