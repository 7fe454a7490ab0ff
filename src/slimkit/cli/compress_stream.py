"""The streaming paths of `slimkit compress` (see `slimkit.stream.route`): a progress bar and the summary.

>>> if route("model.safetensors", "int8") == "tensors":
...     stream_cmd("model.safetensors", "int8", Path("model.slim"), as_json=False)
"""

from __future__ import annotations

from pathlib import Path

from rich import progress as rp

from slimkit.cli import common
from slimkit.core.errors import SlimError
from slimkit.core.text import clean
from slimkit.stream.api import compress_checkpoint
from slimkit.stream.layerwise import compress_layerwise


def layerwise_cmd(model: str, recipe: str, out: Path, as_json: bool, keep_stages: bool = False,
                  overwrite: bool = True) -> None:
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
    if _summary(report, as_json, "layer(s)", streamed="layerwise"):
        return
    common.say(f"wrote {out}: {common.fmt_bytes(report.bytes)} ({report.ratio:.2f}x smaller than the "
               f"checkpoint's {common.fmt_bytes(report.input_bytes)}) in {report.seconds:.1f} s, block by "
               f"block; score it with: slimkit eval {out}")


def stream_cmd(model: str, recipe: str, out: Path, as_json: bool, keep_stages: bool = False,
               overwrite: bool = True) -> None:
    """Compress `model` tensor by tensor with a progress bar; print the size, ratio and throughput."""

    if keep_stages:
        raise SlimError("--keep-stages needs a model to evaluate; a bare checkpoint is compressed in one pass")
    quiet = common.STATE.quiet or not common.console.is_terminal
    columns = (rp.TextColumn("{task.description}", markup=False), rp.BarColumn(), rp.DownloadColumn(),
               rp.TransferSpeedColumn(), rp.TimeRemainingColumn())
    with rp.Progress(*columns, console=common.console, disable=quiet, transient=True) as bar:
        task = bar.add_task(clean(f"compressing {Path(model).name}"), total=None)

        def on_tensor(item, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=clean(item.name[-40:]))

        report = compress_checkpoint(model, recipe, out, on_tensor=on_tensor, overwrite=overwrite)
    if _summary(report, as_json, "tensor(s)", throughput_mb_s=round(report.throughput_mb_s, 1)):
        return
    common.say(f"wrote {out}: {common.fmt_bytes(report.bytes)} ({report.ratio:.2f}x smaller than the "
               f"checkpoint's {common.fmt_bytes(report.input_bytes)}); {report.tensors} tensors in "
               f"{report.seconds:.1f} s, {report.throughput_mb_s:.0f} MB/s")


def _summary(report, as_json: bool, unit: str, **extra) -> bool:
    """Emit the JSON result (True: nothing more to print) or list what was stored per kind."""

    if as_json:
        common.emit_json({"out": str(report.out), "bytes": report.bytes, "input_bytes": report.input_bytes,
                          "ratio": round(report.ratio, 3), "tensors": report.tensors,
                          "seconds": round(report.seconds, 2), **extra, "stored": report.stored})
        return True
    for how, count in sorted(report.stored.items(), key=lambda kv: -kv[1]):
        common.info(f"  {count:5d} {unit} {how}")
    return False
