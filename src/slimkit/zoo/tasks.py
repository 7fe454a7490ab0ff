"""The task of a model slimkit loaded: the zoo entry's own task, or one built for a Hugging Face folder.

Registered with `slimkit.core.provenance`, so `task_for(model)` finds it from any layer.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from slimkit.core.provenance import register_task_finder
from slimkit.core.task import Task
from slimkit.zoo.embedding_task import TOKENIZER_FILES, hf_task
from slimkit.zoo.hf import CAUSAL_LM
from slimkit.zoo.lm_task import lm_task
from slimkit.zoo.registry import ZOO
from slimkit.zoo.token_task import token_task


@register_task_finder
def zoo_task(model: nn.Module, base: dict) -> Task | None:
    """The task of a builtin model or of a model loaded from a Hugging Face folder (else None): a
    causal LM's perplexity (`lm_task`), an encoder's embedding fidelity (`hf_task`, `token_task`)."""
    if base.get("kind") == "zoo" and base.get("name") in ZOO:
        return ZOO[base["name"]].task()
    if base.get("kind") == "hf" and isinstance(base.get("zoo"), str) and base["zoo"] in ZOO:
        return ZOO[base["zoo"]].task()   # a builtin stored as a Hugging Face folder (builtin:smollm2)
    if base.get("kind") == "hf" and base.get("path") and Path(base["path"]).is_dir():
        folder = Path(base["path"])
        if base.get("head") == CAUSAL_LM:
            return lm_task(folder)
        if not any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
            return token_task(folder)  # no tokenizer (random or weights-only folder): byte-level ids
        return hf_task(folder)
    return None
