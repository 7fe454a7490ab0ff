"""Distillation as a recovery stage (`method: recover`): the compressed model imitates the recipe's input."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.core.methods import make_config
from slimkit.core.provenance import task_for
from slimkit.pipeline.recipes import Recipe, load_recipe, run_recipe
from slimkit.pipeline.runner import run_pipeline


@pytest.fixture(scope="module")
def task():
    return task_for(sk.zoo.load("lenet-300-100"))


def _recipe(*stages):
    return Recipe(name="test", description="", stages=list(stages))


def test_recovery_after_low_rank_improves_validation_accuracy_and_keeps_the_teacher(task):
    original = sk.zoo.load("lenet-300-100")
    before = {k: v.clone() for k, v in original.state_dict().items()}
    plain = run_recipe(sk.zoo.load("lenet-300-100"), _recipe(make_config("lowrank", rank=4)), task)
    recovered = run_recipe(original, _recipe(make_config("lowrank", rank=4), make_config("recover", epochs=6)),
                           task)
    # rank 4 loses several points; the recovery stage wins a clear part back on validation
    assert task.validation_score(recovered) >= task.validation_score(plain) + 0.01
    assert recovered.__dict__["slimkit_recover"]["epochs_run"] == 6
    # the structure is the compressed one (factorized layers), not the teacher's
    assert sum(p.numel() for p in recovered.parameters()) == sum(p.numel() for p in plain.parameters())
    # the teacher copy was trained on, never the caller's other model objects
    fresh = sk.zoo.load("lenet-300-100")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())


def test_recovered_model_saves_and_loads_to_the_same_outputs(task, tmp_path):
    model = run_recipe(sk.zoo.load("lenet-300-100"),
                       _recipe(make_config("lowrank", rank=8), make_config("recover", epochs=1)), task)
    sk.save(model, tmp_path / "r.slim")
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(sk.load(tmp_path / "r.slim", runtime="torch")(x), model(x))


def test_recover_outside_a_recipe_says_how_to_use_it(task):
    with pytest.raises(SlimError, match="recipe stage"):
        sk.apply_(sk.zoo.load("lenet-300-100"), make_config("recover", epochs=1), task)


def test_recover_refuses_encoded_tensors(task):
    stages = _recipe(make_config("magnitude", sparsity=0.5), make_config("recover", epochs=1))
    with pytest.raises(SlimError, match=r"fc\d\.weight is stored encoded"):
        run_recipe(sk.zoo.load("lenet-300-100"), stages, task)


def test_pipeline_keeps_stage_artifacts_with_a_recovery_stage(task, tmp_path):
    stages = _recipe(make_config("lowrank", rank=8), make_config("recover", epochs=1))
    model, results = run_pipeline(sk.zoo.load("lenet-300-100"), stages, task, tmp_path / "run", timing=False)
    assert [r.method for r in results] == ["lowrank", "recover"]
    assert all((tmp_path / "run" / f"{i:02d}-{m}.slim").is_file() for i, m in ((1, "lowrank"), (2, "recover")))


def test_yaml_recovery_stage_is_validated(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("description: x\nstages:\n  - method: lowrank\n    rank: 8\n  - method: recover\n    epochs: 2\n")
    assert [c.method for c in load_recipe(str(good)).stages] == ["lowrank", "recover"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\nstages:\n  - method: recover\n    student: [4]\n")
    with pytest.raises(SlimError, match=r"bad.yaml:4: stage 1 \(recover\): student"):
        load_recipe(str(bad))
