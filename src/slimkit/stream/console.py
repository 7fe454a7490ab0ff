"""The `slimkit compress` path for bare checkpoints: when to take it, a progress bar, the summary.

>>> if wants_streaming("model.safetensors", "int8"):
...     stream_cmd("model.safetensors", "int8", Path("model.slim"), as_json=False)
"""

from __future__ import annotations

from pathlib import Path

from slimkit.core.errors import SlimError
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
    from slimkit.pipeline.recipes import load_recipe
    from slimkit.stream.plan import plan_from_recipe

    try:
        plan_from_recipe(load_recipe(recipe))
    except SlimError:
        return False
    return True


def route(model: str, recipe: str, stream: bool = False) -> str | None:
    """How `compress` runs: "tensors" (weight-only recipe, tensor by tensor: a bare checkpoint, see
    `wants_streaming`, or any safetensors folder with `--stream`), "layerwise" (a Hugging Face folder
    and a recipe of one gptq stage or one lowrank stage without fine-tuning, block by block from
    disk: with `--stream`, or automatically when the checkpoint is larger than half the memory
    available now), or None (the model in memory)."""
    from slimkit.pipeline.recipes import load_recipe
    from slimkit.stream.layerwise import layerwise_config
    from slimkit.stream.plan import plan_from_recipe

    if wants_streaming(model, recipe):
        return "tensors"
    path = Path(model)
    folder = path.is_dir() and (path / "config.json").is_file()
    plan = load_recipe(recipe)
    try:
        layerwise_config(plan)
        blockwise, why_not_blockwise = True, None
    except SlimError as e:
        blockwise, why_not_blockwise = False, e
    if folder and blockwise:
        if stream:
            return "layerwise"
        from slimkit.stream.skeleton import checkpoint_bytes

        available = _available_memory()
        return "layerwise" if available is not None and checkpoint_bytes(path) > available // 2 else None
    if not stream:
        return None
    if not folder:
        raise SlimError(f"--stream needs a Hugging Face folder or a safetensors checkpoint, not {model}")
    try:
        plan_from_recipe(plan)   # a one-line error naming the stage that needs data
    except SlimError:
        if {cfg.method for cfg in plan.stages} & {"gptq", "lowrank", "apoz"}:
            raise why_not_blockwise from None   # says how to make it run block by block
        raise
    return "tensors"


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def layerwise_cmd(model: str, recipe: str, out: Path, as_json: bool, keep_stages: bool = False) -> None:
    """A gptq / lowrank / apoz recipe block by block from disk with a progress bar; print the size, ratio and time."""
    from rich import progress as rp

    from slimkit.cli import common
    from slimkit.stream.layerwise import compress_layerwise

    if keep_stages:
        raise SlimError("--keep-stages needs the whole model in memory; layer-by-layer streaming writes one artifact")
    quiet = common.STATE.quiet or not common.console.is_terminal
    with rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                     rp.TimeRemainingColumn(), console=common.console, disable=quiet, transient=True) as bar:
        task = bar.add_task(f"block by block: {Path(model).name}", total=None)

        def on_block(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=name[-40:])

        report = compress_layerwise(model, recipe, out, on_block=on_block)
    if _summary(report, as_json, "layer(s)", streamed="layerwise"):
        return
    common.out.print(f"wrote {out}: {common.fmt_bytes(report.bytes)} ({report.ratio:.2f}x smaller than the "
                     f"checkpoint's {common.fmt_bytes(report.input_bytes)}) in {report.seconds:.1f} s, block by "
                     f"block; score it with: slimkit eval {out}")


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
    if _summary(report, as_json, "tensor(s)", throughput_mb_s=round(report.throughput_mb_s, 1)):
        return
    common.out.print(f"wrote {out}: {common.fmt_bytes(report.bytes)} ({report.ratio:.2f}x smaller than the "
                     f"checkpoint's {common.fmt_bytes(report.input_bytes)}); {report.tensors} tensors in "
                     f"{report.seconds:.1f} s, {report.throughput_mb_s:.0f} MB/s")


def _summary(report, as_json: bool, unit: str, **extra) -> bool:
    """Emit the JSON result (True: nothing more to print) or list what was stored per kind."""
    from slimkit.cli import common

    if as_json:
        common.emit_json({"out": str(report.out), "bytes": report.bytes, "input_bytes": report.input_bytes,
                          "ratio": round(report.ratio, 3), "tensors": report.tensors,
                          "seconds": round(report.seconds, 2), **extra, "stored": report.stored})
        return True
    for how, count in sorted(report.stored.items(), key=lambda kv: -kv[1]):
        common.info(f"  {count:5d} {unit} {how}")
    return False
