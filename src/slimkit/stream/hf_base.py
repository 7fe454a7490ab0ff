"""The architecture a checkpoint streamed tensor by tensor loads back as.

A bare checkpoint has none: its .slim records base `{"kind": "weights"}` and loads as the tensors.
A Hugging Face folder has one in its config.json. When the skeleton built from it
(`slimkit.stream.skeleton.build_skeleton`: `AutoModelForCausalLM` for a causal LM, head included)
names exactly the checkpoint's tensors, the .slim records that base instead, and `slimkit.load` gives
back the model (a `LlamaForCausalLM` with `generate()`), each weight decoded from its codes.
GPT-2's `Conv1D` weights are stored transposed in the checkpoint; such folders stay weights-only
(compress them in memory, or block by block with a GPTQ/AWQ recipe and `--stream`).

>>> runnable_base("path/to/llama-folder", names)["head"]      # doctest: +SKIP
'causal-lm'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from slimkit.core.errors import SlimError
from slimkit.core.provenance import base_of
from slimkit.stream.skeleton import build_skeleton


def runnable_base(source: str | os.PathLike, names: Iterable[str]) -> dict | None:
    """The Hugging Face base of `source` (a folder with config.json) when its architecture's
    state dict has exactly the tensors `names` and no transposed `Conv1D` weight; else None."""
    folder = Path(source)
    if not (folder.is_dir() and (folder / "config.json").is_file()):
        return None
    try:
        model, conv1d = build_skeleton(folder)
    except SlimError:
        return None
    if conv1d or set(model.state_dict()) != set(names):
        return None
    return dict(base_of(model))
