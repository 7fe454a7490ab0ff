"""The `slimkit compress` path for bare checkpoints: when to take it, a progress bar, the summary.

>>> if wants_streaming("model.safetensors", "int8"):
...     stream_cmd("model.safetensors", "int8", Path("model.slim"), as_json=False)
"""

from __future__ import annotations

from pathlib import Path

from slimkit.errors import SlimError
from slimkit.stream.checkpoint import is_sharded


def wants_streaming(model: str, recipe: str) -> bool:
    """A `.safetensors` file or an index json always streams (there is no architecture to run);
    a folder holding a sharded checkpoint streams when the recipe is weight-only, or when the folder
    has no `config.json` (then a data-dependent recipe gets the streaming path's one-line error)."""
    path = Path(model)
    if path.is_file() and (path.suffix == ".safetensors" or is_sharded(path)):
        return True
    if not is_sharded(path):
        return False
    if not (path / "config.json").is_file():
        return True
    from slimkit.recipes import load_recipe
    from slimkit.stream.plan import plan_from_recipe

    try:
        plan_from_recipe(load_recipe(recipe))
    except SlimError:
        return False
    return True


def stream_cmd(model: str, recipe: str, out: Path, as_json: bool, keep_stages: bool = False) -> None:
    """Compress `model` tensor by tensor with a progress bar; print the size, ratio and throughput."""
    from rich import progress as rp

    from slimkit.cli import common
    from slimkit.stream.api import compress_checkpoint

    if keep_stages:
        raise SlimError("--keep-stages needs a model to evaluate; a bare checkpoint is compressed in one pass")
    quiet = common.STATE.quiet or not common.console.is_terminal
    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
               rp.TransferSpeedColumn(), rp.TimeRemainingColumn())
    with rp.Progress(*columns, console=common.console, disable=quiet, transient=True) as bar:
        task = bar.add_task(f"compressing {Path(model).name}", total=None)

        def on_tensor(item, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=item.name[-40:])

        report = compress_checkpoint(model, recipe, out, on_tensor=on_tensor)
    result = {"out": str(out), "bytes": report.bytes, "input_bytes": report.input_bytes,
              "ratio": round(report.ratio, 3), "tensors": report.tensors, "seconds": round(report.seconds, 2),
              "throughput_mb_s": round(report.throughput_mb_s, 1), "stored": report.stored}
    if as_json:
        common.emit_json(result)
        return
    for how, count in sorted(report.stored.items(), key=lambda kv: -kv[1]):
        common.info(f"  {count:5d} tensor(s) {how}")
    common.out.print(f"wrote {out}: {common.fmt_bytes(report.bytes)} ({report.ratio:.2f}x smaller than the "
                     f"checkpoint's {common.fmt_bytes(report.input_bytes)}); {report.tensors} tensors in "
                     f"{report.seconds:.1f} s, {report.throughput_mb_s:.0f} MB/s")
