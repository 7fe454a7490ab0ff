"""The streaming paths of `slimkit compress` (see `slimkit.stream.route`), and a pickled state dict
(`--trust-pickle`), streamed like a bare checkpoint: a progress bar and the summary.

The written file is read back and verified before it takes its name (`slimkit.stream.verify`); its
score is measured on the written file when the original and the result fit in memory together, else
the summary says it was not scored and why (`slimkit.stream.score`). A result over `--max-drop`, or not
scored while `--max-drop` was given, exits with 3, as in memory.

>>> if route("model.safetensors", "int8") == "tensors":
...     stream_cmd("model.safetensors", "int8", Path("model.slim"), as_json=False)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich import progress as rp
from safetensors.torch import save_file
from torch import nn

from slimkit.cli import common
from slimkit.core.errors import SlimError
from slimkit.core.text import clean
from slimkit.pipeline.compress import EXIT_OVER_BUDGET, budget_of, over_budget_line
from slimkit.pipeline.recipes import load_recipe
from slimkit.stream.api import compress_checkpoint
from slimkit.stream.layerwise import compress_layerwise
from slimkit.stream.score import score_streamed


def layerwise_cmd(model: str, recipe: str, out: Path, as_json: bool, keep_stages: bool = False,
                  overwrite: bool = True, max_drop: float | None = None) -> None:
    """A gptq / lowrank / apoz recipe block by block from disk with a progress bar; print the size, ratio and time."""

    if keep_stages:
        raise SlimError("--keep-stages needs the whole model in memory; layer-by-layer streaming writes one artifact")
    quiet = common.STATE.quiet or not common.console.is_terminal
    with rp.Progress(rp.TextColumn("{task.description}", markup=False), rp.BarColumn(), rp.MofNCompleteColumn(),
                     rp.TimeRemainingColumn(), console=common.console, disable=quiet, transient=True) as bar:
        task = bar.add_task(clean(f"block by block: {Path(model).name}"), total=None)

        def on_block(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=clean(name[-40:]))

        report = compress_layerwise(model, recipe, out, on_block=on_block, overwrite=overwrite)
    score = _score(model, recipe, out, max_drop)
    if not _summary(report, as_json, "layer(s)", score, streamed="layerwise"):
        common.say(f"wrote {out}: {common.fmt_bytes(report.bytes)} ({report.ratio:.2f}x smaller than the "
                   f"checkpoint's {common.fmt_bytes(report.input_bytes)}) in {report.seconds:.1f} s, block by "
                   f"block{_scored(score)}")
    _budget(score)


def pickled_cmd(net: nn.Module, model: str, recipe: str, out: Path, as_json: bool, keep_stages: bool = False,
                overwrite: bool = True, max_drop: float | None = None) -> None:
    """A pickled state dict (`net`, read from `model` with weights_only): a bare checkpoint like a
    .safetensors one, so it is written to a temporary .safetensors file and streamed from there."""

    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}   # tied tensors apart
    with tempfile.TemporaryDirectory(prefix="slimkit-") as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file(state, str(path))
        del state
        stream_cmd(str(path), recipe, out, as_json, keep_stages, overwrite, label=model, max_drop=max_drop)


def stream_cmd(model: str, recipe: str, out: Path, as_json: bool, keep_stages: bool = False,
               overwrite: bool = True, label: str | None = None, max_drop: float | None = None) -> None:
    """Compress `model` tensor by tensor with a progress bar; print the size, ratio and throughput.
    `label`: the input as the user named it, when `model` is a converted copy of it."""

    if keep_stages:
        raise SlimError("--keep-stages needs a model to evaluate; a bare checkpoint is compressed in one pass")
    quiet = common.STATE.quiet or not common.console.is_terminal
    columns = (rp.TextColumn("{task.description}", markup=False), rp.BarColumn(), rp.DownloadColumn(),
               rp.TransferSpeedColumn(), rp.TimeRemainingColumn())
    with rp.Progress(*columns, console=common.console, disable=quiet, transient=True) as bar:
        task = bar.add_task(clean(f"compressing {Path(label or model).name}"), total=None)

        def on_tensor(item, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=clean(item.name[-40:]))

        report = compress_checkpoint(model, recipe, out, on_tensor=on_tensor, overwrite=overwrite, label=label)
    score = _score(label or model, recipe, out, max_drop)
    if not _summary(report, as_json, "tensor(s)", score, throughput_mb_s=round(report.throughput_mb_s, 1)):
        common.say(f"wrote {out}: {common.fmt_bytes(report.bytes)} ({report.ratio:.2f}x smaller than the "
                   f"checkpoint's {common.fmt_bytes(report.input_bytes)}); {report.tensors} tensors in "
                   f"{report.seconds:.1f} s, {report.throughput_mb_s:.0f} MB/s{_scored(score)}")
    _budget(score)


def _score(source: str, recipe: str, out: Path, max_drop: float | None) -> dict:
    """`score_streamed` with the budget `slimkit compress` uses (--max-drop, else the recipe's, else 1);
    `asked`: whether --max-drop was given (then a result that cannot be scored is not a success)."""
    plan = load_recipe(recipe)
    with common.status("scoring the written file against the original"):
        score = score_streamed(source, out, budget_of(max_drop, plan))
    return score | {"asked": max_drop is not None}


def _scored(score: dict) -> str:
    """The end of the summary line: the score measured on the file, or that it was not scored."""
    if not score["scored"]:
        return f"; not scored: {score['not_scored']}"
    return f"; {score['score_name']} {score['baseline_score']:.4f} -> {score['score']:.4f} (measured on the file)"


def _budget(score: dict) -> None:
    """Exit 3, with the warning line, when the result lost more than max_drop, or could not be scored
    while a max_drop was asked for (as `slimkit compress` in memory)."""
    if score["scored"] and score["within_budget"]:
        return
    if score["scored"] or score["asked"]:
        common.warn(over_budget_line(score))
        raise SystemExit(EXIT_OVER_BUDGET)


def _summary(report, as_json: bool, unit: str, score: dict, **extra) -> bool:
    """Emit the JSON result (True: nothing more to print) or list what was stored per kind."""

    if as_json:
        keys = {k: v for k, v in score.items() if k != "asked"}
        common.emit_json({"out": str(report.out), "bytes": report.bytes, "input_bytes": report.input_bytes,
                          "ratio": round(report.ratio, 3), "tensors": report.tensors,
                          "seconds": round(report.seconds, 2), **extra, "stored": report.stored,
                          "verified": report.verified, **keys})
        return True
    for how, count in sorted(report.stored.items(), key=lambda kv: -kv[1]):
        common.info(f"  {count:5d} {unit} {how}")
    if report.verified:
        v = report.verified
        common.info(f"  read back and verified: {v['arrays']} arrays by CRC-32, {v['decoded']} tensors decoded"
                    + (f" ({v['not_decoded']} larger ones by their bytes only)" if v["not_decoded"] else ""))
    return False
