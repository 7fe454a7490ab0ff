"""Malformed but parseable specs are one-line input errors, never an internal error (issue 22):
edits that set methods, tensor names that are no module path, byte-order dtypes, Hugging Face
configs that are quantized, too deep for their file or too big for it; a manifest's `base.path`
is never read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.core.provenance import task_for
from slimkit.io.artifact import read_raw, write_raw
from slimkit.io.decode import base_budget
from slimkit.io.manifest import parse_manifest
from slimkit.zoo.config_limits import check_config, position_limit
from slimkit.zoo.resolve import build_hf_base

SEEDS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus" / "seeds"


def doctored(seed: str, tmp_path: Path, edit) -> Path:
    arrays, manifest = read_raw(SEEDS / seed)
    edit(arrays, manifest)
    path = tmp_path / f"{seed}.slim"
    write_raw(path, arrays, manifest)
    return path


def tiny_folder(folder: Path, max_positions: int = 64, tokenizer: bool = False, **config_json) -> Path:
    """A tiny random BERT folder (MiniLM's tokenizer files with `tokenizer`); `config_json` added to config.json."""
    import transformers

    from slimkit.zoo.minilm import model_path

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522 if tokenizer else 64, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=max_positions)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json") * tokenizer:
        shutil.copy(model_path() / name, folder / name)
    doc = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(doc | config_json))
    return folder


@pytest.mark.parametrize("edit, message", [
    ({"op": "setattr", "module": "fc1", "attr": "forward", "value": 1}, "method or class attribute"),
    ({"op": "setattr", "module": "fc1", "attr": "in_features", "value": "64"}, "only a plain str"),
    ({"op": "setattr", "module": "fc1", "attr": "training", "value": 3}, "only a plain number"),
])
def test_setattr_edits_only_replace_plain_values_of_the_same_kind(tmp_path, edit, message):
    path = doctored("lenet-300-100-int8", tmp_path, lambda a, m: m["edits"].append(edit))
    with pytest.raises(SlimFormatError, match=message):
        sk.load(path)


@pytest.mark.parametrize("name", ["", "forward", "a..b", ".x", "x.", "0.training", "__class__"])
def test_tensor_names_that_are_no_module_path_are_refused(tmp_path, name):
    def rename(arrays, manifest):
        old = next(iter(manifest["tensors"]))
        manifest["tensors"][name] = manifest["tensors"].pop(old)
        for key in [k for k in arrays if k.startswith(old)]:
            arrays[name + key[len(old):]] = arrays.pop(key)

    with pytest.raises(SlimFormatError, match="cannot be a module path"):
        sk.load(doctored("weights-stream-int8", tmp_path, rename))


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "f", "single"])
def test_codec_dtypes_must_be_canonical_native_names(tmp_path, dtype):
    def set_dtype(arrays, manifest):
        stages = [s for e in manifest["tensors"].values() for s in e["chain"] if s.get("dtype") == "float32"]
        assert stages
        for stage in stages:
            stage["dtype"] = dtype

    with pytest.raises(SlimFormatError, match="dtype"):
        sk.load(doctored("lenet-300-100-prune-magnitude", tmp_path, set_dtype))


def test_hf_base_with_more_layers_than_tensors_is_refused_before_building(tmp_path):
    path = doctored("hf-bert-tiny-int8", tmp_path,
                    lambda a, m: m["base"]["config"].update(num_hidden_layers=20_000))
    with pytest.raises(SlimFormatError, match="20000 layers"):
        sk.load(path)


def test_hf_base_is_bounded_by_the_files_real_size():
    arrays, raw = read_raw(SEEDS / "hf-bert-tiny-int8")
    manifest = parse_manifest(json.dumps(raw), "seed")
    build_hf_base(manifest.base, manifest)   # fits the claims-based bound
    with base_budget(10_000), pytest.raises(SlimFormatError, match="more than the 10000 bytes"):
        build_hf_base(manifest.base, manifest)


def test_a_huge_embedding_is_refused_before_transformers_builds_anything():
    with pytest.raises(SlimError, match="embedding table alone takes 20000000000 bytes"):
        check_config({"vocab_size": 312_500_000, "hidden_size": 16}, tensors=10, max_bytes=1 << 26)
    check_config({"vocab_size": 64, "hidden_size": 16}, tensors=10, max_bytes=1 << 26)


def test_quantized_configs_are_refused():
    with pytest.raises(SlimError, match="already quantized .bitsandbytes"):
        check_config({"quantization_config": {"quant_method": "bitsandbytes"}}, tensors=10)
    with pytest.raises(SlimError, match="experts"):
        check_config({"text_config": {"num_local_experts": 64}}, tensors=10)
    check_config({"num_hidden_layers": 2, "max_window_layers": 28, "layer_norm_eps": 1e-5}, tensors=10)


def test_hf_folder_with_quantization_config_is_a_one_line_error(tmp_path):
    folder = tiny_folder(tmp_path / "bnb", quantization_config={"quant_method": "bitsandbytes",
                                                                 "load_in_4bit": True})
    with pytest.raises(SlimError, match="already quantized"):
        sk.resolve(str(folder))


def test_position_limit_caps_the_task_and_refuses_tiny_tables(tmp_path):
    from slimkit.zoo.embedding_task import hf_task
    assert position_limit({"text_config": {"n_positions": 64}}) == 64
    with pytest.raises(SlimError, match="at most 4 tokens"):
        position_limit({"max_position_embeddings": 4})
    with pytest.raises(SlimError, match="at most 4 tokens"):   # refused before the model is loaded
        sk.resolve(str(tiny_folder(tmp_path / "tiny", max_positions=4)))
    folder = tiny_folder(tmp_path / "short", max_positions=16, tokenizer=True)
    task = hf_task(folder, sentences=[f"sentence number {i} is a little longer than the rest" * 3
                                      for i in range(20)])
    assert task.example_inputs(2)["input_ids"].shape == (2, 16)   # 40 tokens capped at the table's 16
    model = sk.resolve(str(folder))
    assert abs(task.score(model) - 1.0) < 1e-5


def test_manifest_base_path_is_never_read(tmp_path):
    other = tiny_folder(tmp_path / "other", tokenizer=True)
    path = doctored("hf-bert-tiny-int8", tmp_path, lambda a, m: m["base"].update(path=str(other)))
    model = sk.load(path)
    assert "path" not in model.slimkit_base and task_for(model) is None
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state.shape == (1, 3, 16)


# ---------------------------------------------------------------- found by the tree fuzzer (fuzz/tree_fuzz.py)

def test_shapes_of_huge_rank_are_refused_in_one_line(tmp_path):
    def edit(arrays, manifest):
        manifest["tensors"]["fc1.bias"]["shape"] = [300] * 100_000   # its product has 250,000 digits

    with pytest.raises(SlimFormatError, match="dimensions"):
        sk.load_state_dict(doctored("lenet-300-100-int8", tmp_path, edit))


def test_convolution_padding_beyond_the_kernel_is_refused():
    from slimkit.surgery.specs import from_spec

    spec = {"type": "Conv2d", "in": 1, "out": 2, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
            "dilation": [1, 1], "groups": 1, "bias": True}
    from_spec(spec)
    with pytest.raises(SlimFormatError, match="padding"):
        from_spec({**spec, "padding": [1, 1 << 20]})         # 1.3 GB per forward of an 8x8 input
    quant = {**spec, "type": "QuantConv2d", "bits": 8, "symmetric": True, "granularity": "channel",
             "group_size": 9, "scale_dtype": "float32"}
    from_spec(quant)
    with pytest.raises(SlimFormatError, match="padding"):
        from_spec({**quant, "padding": [1 << 20, 1]})
    with pytest.raises(SlimFormatError, match="output size"):
        from_spec({"type": "AdaptiveAvgPool2d", "size": [1 << 20, 1 << 20]})


@pytest.mark.parametrize("config, message", [
    ({"num_attention_heads": -2}, "num_attention_heads must be a positive integer"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"hidden_dropout_prob": float("nan")}, "hidden_dropout_prob must be a probability"),
    ({"add_cross_attention": "true"}, "add_cross_attention.: TypeError"),   # transformers' strict validation
    ({"num_key_value_heads": 1 << 20, "model_type": "llama", "architectures": ["LlamaForCausalLM"]},
     "bytes of weights, more than"),                                   # measured on the meta device first
])
def test_hf_folder_configs_are_one_line_errors(tmp_path, config, message):
    folder = tiny_folder(tmp_path / "f", **config)
    with pytest.raises(SlimError, match=message):
        sk.resolve(str(folder))


def test_metadata_is_bounded_by_the_files_size(tmp_path):
    """Found by the tree fuzzer: a 13.5 MB file whose manifest held a chain of 100,000 codec stages
    parsed into ~215 MB of Python objects. Header and manifest text may take 4 MiB or 1/16 of the file."""
    import sys

    from slimkit.io.safetensors_header import METADATA_FLOOR

    sys.path.insert(0, str(SEEDS.parents[2]))
    from fuzz.mutate import get_manifest, join_file, put_manifest, split_file

    def long_chain(arrays, manifest):
        stage = manifest["tensors"]["fc2.weight"]["chain"][0]
        manifest["tensors"]["fc2.weight"]["chain"] = [stage] * 40_000      # ~5 MB of JSON

    with pytest.raises(SlimFormatError, match="header length .* is more than the 4194304 bytes allowed"):
        sk.read_manifest(doctored("weights-stream-int8", tmp_path, long_chain))
    header, body = split_file((SEEDS / "lenet-300-100-int8").read_bytes())   # the packed layout: deflated
    manifest, key = get_manifest(header, body)
    manifest.setdefault("info", {})["padding"] = "x" * (METADATA_FLOOR + 1)   # deflates to a few KB
    body = put_manifest(header, manifest, key, body)
    packed = tmp_path / "packed.slim"
    packed.write_bytes(join_file(header, body))
    assert packed.stat().st_size < 100_000
    with pytest.raises(SlimFormatError, match="too large"):
        sk.read_manifest(packed)


def test_metadata_budget_is_4_mib_or_a_sixteenth_of_the_file():
    """The fuzzer-chosen header cap (docs/safety.md): 4 MiB for any file, 1/16 of a larger one, 64 MiB at most."""
    from slimkit.io.safetensors_header import MAX_HEADER, METADATA_FLOOR, metadata_budget

    assert METADATA_FLOOR == 4 << 20 and MAX_HEADER == 64 << 20
    assert metadata_budget(1000) == 4 << 20
    assert metadata_budget(160 << 20) == 10 << 20
    assert metadata_budget(100 << 30) == 64 << 20
