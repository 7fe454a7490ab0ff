from __future__ import annotations

import json

import pytest

import slimkit as sk
from slimkit.pipeline.recipes import Recipe, run_recipe
from slimkit.pipeline.runner import run_pipeline


def test_every_stage_is_saved_and_measured(lenet, digits_task, tmp_path):
    recipe = Recipe("two", "", [sk.MagnitudePruningConfig(sparsity=0.5, scope="global"), sk.make_config("int8")])
    model, stages = run_pipeline(lenet, recipe, digits_task, tmp_path, timing=False)
    assert [s.method for s in stages] == ["magnitude", "int8"]
    for s in stages:
        assert s.bytes == (tmp_path / s.path.split("/")[-1]).stat().st_size and s.score > 0.9
    assert stages[1].bytes < stages[0].bytes
    assert json.loads((tmp_path / "stages.json").read_text())[1]["method"] == "int8"


def test_a_failing_stage_keeps_the_earlier_artifacts(lenet, digits_task, tmp_path):
    bad = sk.make_config("rtn", bits=4, targets="fc9")  # no such layer
    recipe = Recipe("fails", "", [sk.MagnitudePruningConfig(sparsity=0.5), bad])
    with pytest.raises(sk.SlimError):
        run_pipeline(lenet, recipe, digits_task, tmp_path, timing=False)
    stages = json.loads((tmp_path / "stages.json").read_text())
    assert stages[0]["error"] is None and stages[1]["error"].startswith("SlimError") and "fc9" in stages[1]["error"]
    assert sk.load(stages[0]["path"]) is not None


def test_run_recipe_is_the_one_loop_its_callbacks_steer(lenet, digits_task):
    """`before_stage` chooses the config each stage applies (the search cuts time limits with it) and
    may stop the run; `on_stage` sees every finished stage."""
    recipe = Recipe("two", "", [sk.MagnitudePruningConfig(sparsity=0.5), sk.MagnitudePruningConfig(sparsity=0.6)])
    seen = []

    def before(i, config):
        return config.model_copy(update={"sparsity": 0.7}) if i == 1 else config

    model = run_recipe(lenet, recipe, digits_task, on_stage=lambda i, c, _m: seen.append((i, c.sparsity)),
                       before_stage=before)
    assert seen == [(0, 0.5), (1, 0.7)]
    assert float((model.fc1.weight == 0).float().mean()) == pytest.approx(0.7, abs=0.01)

    def stop(i, config):
        if i == 1:
            raise TimeoutError("out of time")
        return config

    seen.clear()
    with pytest.raises(TimeoutError):
        run_recipe(lenet, recipe, digits_task, on_stage=lambda i, c, _m: seen.append(i), before_stage=stop)
    assert seen == [0]
