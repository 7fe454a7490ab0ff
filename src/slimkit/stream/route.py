"""Which path `slimkit compress` takes: tensor by tensor (a bare checkpoint, a weight-only recipe),
block by block from disk (a Hugging Face folder larger than memory), or the model in memory.

>>> route("model.safetensors", "int8")
'tensors'
"""

from __future__ import annotations

from pathlib import Path

from slimkit.core.errors import SlimError
from slimkit.core.streaming import stream_support
from slimkit.io.shards import is_sharded
from slimkit.pipeline.recipes import load_recipe
from slimkit.stream.layerwise import layerwise_config
from slimkit.stream.plan import plan_from_recipe
from slimkit.stream.score import available_memory
from slimkit.stream.skeleton import checkpoint_bytes


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

    try:
        plan_from_recipe(load_recipe(recipe))
    except SlimError:
        return False
    return True


def route(model: str, recipe: str, stream: bool = False) -> str | None:
    """How `compress` runs: "tensors" (weight-only recipe, tensor by tensor: a bare checkpoint, see
    `wants_streaming`, or any safetensors folder with `--stream`), "layerwise" (a Hugging Face folder
    and a recipe of one stage that streams block by block, `slimkit.stream.layerwise.layerwise_config`,
    e.g. one gptq stage: with `--stream`, or automatically when the checkpoint is larger than half the
    memory available now), or None (the model in memory)."""

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

        available = available_memory()
        return "layerwise" if available is not None and checkpoint_bytes(path) > available // 2 else None
    if not stream:
        return None
    if not folder:
        raise SlimError(f"--stream needs a Hugging Face folder or a safetensors checkpoint, not {model}")
    try:
        plan_from_recipe(plan)   # a one-line error naming the stage that needs data
    except SlimError:
        if any(stream_support(cfg.method).blocks for cfg in plan.stages):
            raise why_not_blockwise from None   # says how to make it run block by block
        raise
    return "tensors"

