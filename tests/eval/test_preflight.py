"""Pre-flight: capabilities, coupled groups, and recipe size estimates against real files."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit as sk
from slimkit.io.sizing import Plan, estimate_stage, file_size, sparse_index_bytes
from slimkit.pipeline.preflight import capabilities, coupled_groups, estimate_recipe, preflight
from slimkit.pipeline.recipes import Recipe

TOLERANCE = 0.15  # estimate vs real file size, relative


def _cheap(recipe: Recipe) -> Recipe:
    """The recipe without its training (sizes do not depend on it): one-shot, no fine-tuning."""
    stages = []
    for cfg in recipe.stages:
        update = {k: 0 for k in ("epochs", "finetune_epochs") if k in type(cfg).model_fields}
        if "schedule" in type(cfg).model_fields:
            update["schedule"] = type(cfg).model_fields["schedule"].annotation("oneshot")
        stages.append(cfg.model_copy(update=update))
    return Recipe(recipe.name, recipe.description, stages, recipe.models)


def _real_size(model, recipe: Recipe, task) -> int:
    return file_size(sk.run_recipe(copy.deepcopy(model), recipe, task))


@pytest.mark.parametrize("name", ["int8", "kmeans", "prune-magnitude"])
def test_estimate_within_tolerance_of_the_real_file(lenet, digits_task, name):
    recipe = sk.load_recipe(name)
    cheap = _cheap(recipe)
    est = estimate_recipe(lenet, recipe, digits_task)
    assert est["error"] is None and est["bytes"] > 0
    real = _real_size(lenet, cheap, digits_task)
    assert abs(est["bytes"] - real) <= TOLERANCE * real, (name, est["bytes"], real)
    # the estimate reads no data: training options do not change it
    assert estimate_recipe(lenet, cheap, digits_task)["bytes"] == est["bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["int8", "kmeans", "prune-magnitude", "deep-compression", "hashed", "lowrank",
                                  "nm-2-4", "qat-int4", "distill-mlp"])
def test_estimate_against_the_full_recipe(lenet, digits_task, name):
    recipe = sk.load_recipe(name)
    est = estimate_recipe(lenet, recipe, digits_task)["bytes"]
    real = _real_size(lenet, recipe, digits_task)
    assert abs(est - real) <= TOLERANCE * real, (name, est, real)


@pytest.mark.parametrize("name", ["int8", "int8-static", "qat-int4", "rtn-4bit-g4"])
def test_lenet5_quantization_estimates_count_the_convs(lenet5_trained, digits_task, name, monkeypatch):
    """Convs are quantized now: the estimate must follow them to within 1% of the real file."""
    from slimkit.nn.quant_conv import QuantConv2d
    from slimkit.quantization.qat import QATConfig

    monkeypatch.setattr(QATConfig, "train", lambda self, *args: None)   # sizes do not depend on training

    if name == "rtn-4bit-g4":   # conv1 (in*kh*kw = 9) falls back to per-channel, conv2 keeps groups of 4
        recipe = Recipe(name, "", [sk.make_config("rtn", bits=4, group_size=4, symmetric=False)], [])
    else:
        recipe = _cheap(sk.load_recipe(name))
    est = estimate_recipe(lenet5_trained, recipe, digits_task)
    assert est["error"] is None and {"conv1", "conv2"} <= set(est["stages"][0]["touched"])
    model = sk.run_recipe(copy.deepcopy(lenet5_trained), recipe, digits_task)
    assert isinstance(model.conv1, QuantConv2d) and isinstance(model.conv2, QuantConv2d)
    real = file_size(model)
    assert abs(est["bytes"] - real) <= 0.01 * real, (name, est["bytes"], real)


def test_int8_payload_is_exact(lenet):
    from slimkit.io.artifact import encode_model
    from slimkit.quantization.api import Int8Config

    plan = Plan.of(lenet)
    note = estimate_stage(plan, Int8Config())
    assert sorted(note["touched"]) == ["fc1", "fc2", "fc3"] and note["basis"].startswith("exact")
    arrays, _ = encode_model(sk.quantize_(copy.deepcopy(lenet), Int8Config()))
    assert plan.payload() == sum(a.nbytes for a in arrays.values())


def test_sparse_positions_are_what_the_codec_writes():
    from slimkit.io.codecs import encode_chain

    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(300, 64, generator=gen) > 0.9
    stored, _ = encode_chain(mask.float().numpy(), [{"codec": "sparse"}])
    assert sparse_index_bytes(mask) == sum(a.nbytes for k, a in stored.items() if k != "data")


def test_coupled_groups_read_as_text(lenet5_trained, digits_task):
    groups = coupled_groups(lenet5_trained, digits_task)
    assert [g["text"] for g in groups["groups"]] == [
        "conv1[out] <-> bn1[ch] <-> conv2[in]", "conv2[out] <-> bn2[ch] <-> fc1[in x4]",
        "fc1[out] <-> fc2[in]", "fc2[out] <-> fc3[in]"]
    assert groups["unprunable"] == {"fc3": "feeds the model output"}
    assert coupled_groups(lenet5_trained, None)["error"].startswith("no example inputs")


def test_capabilities_say_why_layers_stay_float(lenet5_trained, digits_task):
    rows = {r["layer"]: r for r in capabilities(lenet5_trained, digits_task)}
    assert rows["conv1"]["float_reason"] is None and rows["conv1"]["quantization"].startswith("int8 weights")
    assert "per-channel over in*kh*kw=9" in rows["conv1"]["quantization"]
    assert "(per-channel or groups of 32/64/128 (as 24/48/72 over in*kh*kw=144))" in rows["conv2"]["quantization"]
    assert "groups of 32/64/128 (as 30/60/per-channel over 120 inputs)" in rows["fc2"]["quantization"]
    assert "normalization" in rows["bn1"]["float_reason"]
    assert rows["fc1"]["float_reason"] is None and rows["fc1"]["quantization"].startswith("int8")
    assert "no 2:4" in rows["conv1"]["pruning"] and "2:4" in rows["conv2"]["pruning"]
    assert "not structured: feeds the model output" in rows["fc3"]["pruning"]
    assert rows["fc1"]["sharing"] == "kmeans, lowrank, hashed" and "hashed" not in rows["conv2"]["sharing"]


def test_recipe_that_cannot_apply_says_why_like_compress(lenet, digits_task):
    est = estimate_recipe(lenet, sk.load_recipe("int4"), None)
    assert est["bytes"] is None
    assert est["error"].startswith("stage 1 (gptq): gptq needs calibration data")


def test_estimates_leave_the_model_alone(lenet5_trained, digits_task):
    before = {k: v.clone() for k, v in lenet5_trained.state_dict().items()}
    report = preflight(lenet5_trained, digits_task, ["prune-structured", "apoz", "lowrank", "distill-mlp", "kmeans"])
    after = lenet5_trained.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    sizes = {r["recipe"]: r["bytes"] for r in report["recipes"]}
    assert all(0 < b < report["baseline_bytes"] for b in sizes.values())
    structured = next(r for r in report["recipes"] if r["recipe"] == "prune-structured")
    assert structured["stages"][0]["touched"] == {"conv1": "8 channels kept", "conv2": "16 channels kept",
                                                  "fc1": "60 channels kept", "fc2": "42 channels kept"}
    assert not structured["exact"] and structured["stages"][0]["basis"].startswith("at least")


def test_minilm_preflight(digits_task):
    pytest.importorskip("transformers")
    model = sk.zoo.load("minilm")
    from slimkit.core.provenance import task_for

    report = preflight(model, task_for(model), ["int8", "int4", "prune-structured", "distill-l3", "apoz"])
    rows = {r["layer"]: r for r in report["capabilities"]}
    assert "normalization" in rows["embeddings.LayerNorm"]["float_reason"]
    assert rows["embeddings.word_embeddings"]["float_reason"] is None
    assert len(report["groups"]["blocks"]) == 6
    sizes = {r["recipe"]: r for r in report["recipes"]}
    assert sizes["int4"]["bytes"] < sizes["int8"]["bytes"] < report["baseline_bytes"] / 3.5
    assert sizes["prune-structured"]["stages"][0]["touched"]["encoder.layer.0"] == "768/1536 FFN neurons, 12/12 heads"
    assert sizes["distill-l3"]["exact"] and sizes["distill-l3"]["bytes"] < report["baseline_bytes"]
    assert sizes["apoz"]["bytes"] is None and "APoZ needs a ReLU after encoder.layer.0" in sizes["apoz"]["error"]


def test_compressed_model_reports_layers_as_stored_and_recipes_as_no_op(lenet, digits_task):
    from slimkit.quantization.api import Int8Config

    model = sk.quantize_(lenet, Int8Config())
    rows = {r["layer"]: r for r in capabilities(model, digits_task)}
    assert rows["fc1"]["float_reason"] == "already compressed (Int8Linear)"
    est = estimate_recipe(model, sk.load_recipe("int8"), digits_task)
    assert est["bytes"] is None and "touches no layer" in est["error"]
