"""Sharded checkpoints, bad inputs, data-dependent recipes, and outputs that are never partial."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk
from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io.shards import is_sharded
from slimkit.stream import compress_checkpoint

from .conftest import write_sharded


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sharded_equals_single_file(tmp_path, ckpt, tensors):
    shards = tmp_path / "sharded"
    shards.mkdir()
    write_sharded(shards, tensors, shards=3)
    assert is_sharded(shards) and is_sharded(shards / "model.safetensors.index.json")
    one = compress_checkpoint(ckpt, "int8", tmp_path / "one.slim")
    for source in (shards, shards / "model.safetensors.index.json"):
        many = compress_checkpoint(source, "int8", tmp_path / "many.slim")
        assert many.tensors == one.tensors and many.input_bytes == one.input_bytes
        a, b = sk.load_state_dict(tmp_path / "one.slim"), sk.load_state_dict(tmp_path / "many.slim")
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_shard_is_named(tmp_path, tensors):
    write_sharded(tmp_path, tensors, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SlimError, match="shard model-00002-of-00002.safetensors is missing"):
        compress_checkpoint(tmp_path, "int8", tmp_path / "out.slim")
    assert not (tmp_path / "out.slim").exists()


def test_index_naming_a_tensor_its_shard_lacks(tmp_path, tensors):
    write_sharded(tmp_path, tensors, shards=2)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SlimFormatError, match="'ghost.weight' is not in its shard"):
        compress_checkpoint(tmp_path, "int8", tmp_path / "out.slim")


def test_shard_outside_the_folder_is_refused(tmp_path, tensors):
    write_sharded(tmp_path, tensors, shards=1)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../elsewhere.safetensors" for k in index["weight_map"]}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SlimFormatError, match="outside the checkpoint folder"):
        compress_checkpoint(tmp_path, "int8", tmp_path / "out.slim")


@pytest.mark.parametrize("damage", ["truncate", "header_length", "not_json", "lying_offsets"])
def test_corrupt_checkpoint_one_line_error(tmp_path, ckpt, damage):
    raw = bytearray(ckpt.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    if damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "header_length":
        raw[:8] = (len(raw) * 2).to_bytes(8, "little")
    elif damage == "not_json":
        raw[8:12] = b"\xff\xfe{["
    else:
        header = json.loads(raw[8:8 + n])
        header["lm_head.weight"]["data_offsets"][1] += 4
        text = json.dumps(header).encode()
        raw = bytearray(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(SlimFormatError) as info:
        compress_checkpoint(ckpt, "int8", tmp_path / "out.slim")
    assert str(ckpt) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out.slim").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("recipe,stage", [("int4", "stage 1 (gptq) needs calibration data"),
                                          ("int8-static", "stage 1 (int8-static)"),
                                          ("kmeans", "stage 1 (kmeans) fine-tunes"),
                                          ("deep-compression", "stage 1 (magnitude) fine-tunes"),
                                          ("apoz", "stage 1 (apoz)")])
def test_data_dependent_recipe_names_the_stage(tmp_path, ckpt, recipe, stage):
    with pytest.raises(SlimError, match=stage.replace("(", r"\(").replace(")", r"\)")):
        compress_checkpoint(ckpt, recipe, tmp_path / "out.slim")
    assert not (tmp_path / "out.slim").exists()


def test_yaml_recipes_map_to_streaming(tmp_path, ckpt, tensors):
    recipe = tmp_path / "dc.yaml"
    recipe.write_text("stages:\n  - method: magnitude\n    sparsity: 0.5\n"
                      "  - method: kmeans\n    bits: 3\n    coding: bitpack\n    ignore: [lm_head]\n")
    with pytest.raises(SlimError, match="different targets/ignore"):
        compress_checkpoint(ckpt, str(recipe), tmp_path / "out.slim")
    recipe.write_text("stages:\n  - method: rtn\n    bits: 4\n    group_size: 32\n    ignore: ['re:lm_.*']\n")
    report = compress_checkpoint(ckpt, str(recipe), tmp_path / "out.slim")
    back = sk.load_state_dict(tmp_path / "out.slim")
    assert torch.equal(back["lm_head.weight"], tensors["lm_head.weight"])               # ignored
    assert torch.equal(back["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"])  # no embedding_bits
    assert report.stored["int4 g32"] == 4


def test_failure_midway_leaves_no_output(tmp_path, ckpt):
    (tmp_path / "out.slim").write_bytes(b"previous")
    calls = []

    def boom(item, done, total):
        calls.append(item.name)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_checkpoint(ckpt, "int8", tmp_path / "out.slim", on_tensor=boom)
    assert (tmp_path / "out.slim").read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


def test_output_may_not_be_the_input(tmp_path, ckpt):
    before = ckpt.read_bytes()
    with pytest.raises(SlimError, match="input"):
        compress_checkpoint(ckpt, "int8", ckpt)
    assert ckpt.read_bytes() == before


def test_unsupported_dtype_is_named(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({"w": torch.zeros(4, 4)}, str(path))
    raw = path.read_bytes().replace(b'"F32"', b'"F8X"')
    path.write_bytes(raw)
    with pytest.raises(SlimFormatError, match="'w' has unsupported dtype 'F8X'"):
        compress_checkpoint(path, "int8", tmp_path / "out.slim")


@pytest.mark.parametrize("plan", ["int8", "kmeans0", "magnitude"])
def test_empty_and_scalar_tensors_are_copied(tmp_path, plan):
    from slimkit.stream import StreamPlan
    from slimkit.stream.plan import KMeansSpec

    plans = {"int8": "int8", "kmeans0": StreamPlan(kmeans=KMeansSpec(2)), "magnitude": StreamPlan(sparsity=0.5)}
    tensors = {"empty": torch.zeros(0, 64), "scalar": torch.tensor(3.5), "w": torch.randn(64, 64)}
    save_file(tensors, str(tmp_path / "c.safetensors"))
    report = compress_checkpoint(tmp_path / "c.safetensors", plans[plan], tmp_path / "c.slim")
    back = sk.load_state_dict(tmp_path / "c.slim")
    assert back["empty"].shape == (0, 64) and torch.equal(back["scalar"], tensors["scalar"])
    assert report.stored["copied"] == 2 and not torch.equal(back["w"], tensors["w"])
