"""`slimkit.stream` only orchestrates: what a method does when streaming is registered by the method's
package (`slimkit.core.streaming`). A toy method registered in the test streams through the same
drivers; a method without support is refused in one line."""

from __future__ import annotations

import ast
import dataclasses
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import slimkit as sk
import slimkit.stream
from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig
from slimkit.core.streaming import STREAMING, QuantSpec, register_streaming, step, stream_support
from slimkit.io.artifact import read_manifest
from slimkit.pipeline.recipes import Recipe
from slimkit.stream import compress_checkpoint
from slimkit.stream.layerwise import compress_layerwise, layerwise_config


class ToyConfig(MethodConfig):
    method: ClassVar[str] = "toy-stream"
    family: ClassVar[Family] = Family.QUANTIZE
    fail: bool = False


def _recipe(**options) -> Recipe:
    return Recipe(name="toy", description="", stages=[ToyConfig(**options)])


def _int8_rows(cfg, plan):
    return dataclasses.replace(plan, quant=QuantSpec(8), embedding_quant=QuantSpec(8))


class NoOpWorker:
    """Leaves every block as it is; counts them."""

    def __init__(self, model, task, cfg):
        self.model, self.task, self.cfg = model, task, cfg
        self.batches = task.calibration(4)
        self.counts: Counter[str] = Counter()
        self.info = {"toy": True}

    def plan(self, blocks, probe):
        return {i: [] for i in range(len(blocks))}

    def outside(self, blocks):
        self.counts["outside"] += 1

    def block(self, name, block, chain, targets, advance):
        step(chain, block, advance)
        self.counts["untouched block"] += 1


def _refuse_fail(cfg) -> None:
    if cfg.fail:
        raise SlimError("toy-stream block by block: set fail: false")


@pytest.fixture()
def toy():
    register_streaming("toy-stream", tensors=_int8_rows, blocks=NoOpWorker, check_blocks=_refuse_fail)
    try:
        yield
    finally:
        STREAMING.pop("toy-stream", None)


def test_a_registered_tensor_hook_streams_tensor_by_tensor(toy, ckpt, tmp_path):
    toy_report = compress_checkpoint(ckpt, _recipe(), tmp_path / "toy.slim")
    int8_report = compress_checkpoint(ckpt, "int8", tmp_path / "int8.slim")
    assert toy_report.stored == int8_report.stored and "int8 per-row" in toy_report.stored
    assert torch.equal(sk.load_state_dict(tmp_path / "toy.slim")["lm_head.weight"],
                       sk.load_state_dict(tmp_path / "int8.slim")["lm_head.weight"])


def test_a_method_without_streaming_support_is_refused_in_one_line(ckpt, tmp_path):
    assert stream_support("toy-stream").tensors is None
    with pytest.raises(SlimError, match=r"stage 1 \(toy-stream\) is not a streaming method") as err:
        compress_checkpoint(ckpt, _recipe(), tmp_path / "out.slim")
    assert "\n" not in str(err.value) and "int8" in str(err.value)   # says what can stream
    with pytest.raises(SlimError, match="layer-by-layer streaming runs a recipe of .*one gptq stage") as err:
        layerwise_config(_recipe())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out.slim").exists()


def test_a_registered_block_worker_runs_block_by_block(toy, tmp_path):
    tf = pytest.importorskip("transformers")
    config = tf.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    folder = tmp_path / "bert"
    tf.AutoModel.from_config(config).save_pretrained(folder)
    with pytest.raises(SlimError, match="set fail: false"):
        compress_layerwise(folder, _recipe(fail=True), tmp_path / "no.slim")
    assert not (tmp_path / "no.slim").exists()
    report = compress_layerwise(folder, _recipe(), tmp_path / "toy.slim")
    assert report.stored == {"outside": 1, "untouched block": 2}
    assert read_manifest(tmp_path / "toy.slim").info["toy"] is True
    original, streamed = sk.resolve(str(folder)).state_dict(), sk.load(tmp_path / "toy.slim").state_dict()
    assert original.keys() == streamed.keys()
    assert all(torch.equal(original[k], streamed[k]) for k in original)


def test_shipped_methods_stream_from_their_own_packages():
    owners = {"int8": "quantization", "rtn": "quantization", "gptq": "quantization", "kmeans": "sharing",
              "lowrank": "sharing", "magnitude": "pruning", "nm": "pruning", "apoz": "pruning", "awq": "quantization",
              "smoothquant": "quantization", "wanda": "pruning", "sparsegpt": "pruning"}
    for method, package in owners.items():
        support = stream_support(method)
        hook = support.tensors or support.blocks
        assert hook.__module__.startswith(f"slimkit.{package}."), (method, hook.__module__)


def test_stream_names_no_method_in_its_code():
    """No string constant of slimkit.stream's code (docstrings aside) is a method's name."""
    names = set(sk.methods()) | set(STREAMING)
    found = []
    for path in Path(slimkit.stream.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found += [(path.name, n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in names and id(n) not in docs]
    assert found == []
