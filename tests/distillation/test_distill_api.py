"""The `distill` method: API, recipe, bad input."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.distillation import DistillConfig, distill, shrink_mlp
from slimkit.distillation.students import param_count


def test_registered_and_configs_are_strict():
    assert sk.methods()["distill"] is DistillConfig
    assert DistillConfig.family == sk.Family.DISTILL
    with pytest.raises(ValueError):
        DistillConfig(temperatur=2.0)
    with pytest.raises(ValueError):
        DistillConfig(alpha=1.5)


def test_distill_learns_from_the_teacher(lenet, digits_task):
    student = shrink_mlp(lenet, (32, 16), seed=0)
    seen = []
    out = distill(lenet, student, digits_task, DistillConfig(epochs=6, lr=1e-2), on_epoch=seen.append)
    assert out is student and len(seen) == 6
    assert digits_task.validation_score(student) == max(info.score for info in seen)
    assert digits_task.score(student) > 0.6  # chance is 0.1; 6 epochs is a smoke test
    assert lenet.fc1.out_features == 300 and all(p.requires_grad for p in lenet.parameters())


def test_distill_mlp_recipe_gives_a_10x_smaller_model(lenet, digits_task, tmp_path):
    recipe = sk.load_recipe("distill-mlp")
    (stage,) = recipe.stages
    assert isinstance(stage, DistillConfig)
    student = stage.make_student(lenet)
    assert param_count(lenet) >= 10 * param_count(student)
    quick = stage.model_copy(update={"epochs": 2})
    model = sk.apply_(lenet, quick, digits_task)
    path = tmp_path / "s.slim"
    sk.save(model, path)
    x = digits_task.example_inputs(16)["x"]
    with torch.no_grad():
        assert torch.equal(sk.load(path, runtime="torch")(x), model(x))


def test_unlabelled_batches_work(lenet, digits_task):
    batches = [{"x": b["x"]} for b in digits_task.calibration(1024)]
    student = distill(lenet, shrink_mlp(lenet, (16, 8)), batches,
                      DistillConfig(epochs=12, lr=1e-2, temperature=1.0))
    assert digits_task.score(student) > 0.4  # chance is 0.1


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


def test_incompatible_outputs_are_refused(lenet, digits_task):
    student = shrink_mlp(lenet, (16, 8))
    student.fc3 = torch.nn.Linear(8, 5)
    with pytest.raises(sk.SlimError) as err:
        distill(lenet, student, digits_task, DistillConfig(epochs=1))
    assert "without a projection" in _one_line(err.value)


@pytest.mark.parametrize("data", [[], None, "  "])
def test_empty_data_is_refused(lenet, data):
    with pytest.raises(sk.SlimError) as err:
        distill(lenet, shrink_mlp(lenet, (16, 8)), data, DistillConfig(epochs=1))
    assert "data" in _one_line(err.value) or "text file" in str(err.value)


def test_missing_text_file_is_refused(lenet, tmp_path):
    with pytest.raises(sk.SlimError) as err:
        distill(lenet, shrink_mlp(lenet, (16, 8)), str(tmp_path / "nope.txt"), DistillConfig(epochs=1))
    assert "does not exist" in _one_line(err.value)
    with pytest.raises(sk.SlimError) as err:
        distill(lenet, shrink_mlp(lenet, (16, 8)), ["some text"], DistillConfig(epochs=1))
    assert "tokenizer" in _one_line(err.value)


def test_student_must_be_derivable(lenet, digits_task):
    with pytest.raises(sk.SlimError, match="needs a student"):
        sk.apply_(lenet, DistillConfig(epochs=1), digits_task)
    with pytest.raises(sk.SlimError, match="either"):
        sk.apply_(lenet, DistillConfig(student=[4, 4], every=2), digits_task)
    with pytest.raises(sk.SlimError, match="different module"):
        distill(lenet, lenet, digits_task)


def test_distill_l3_recipe_parses_into_a_layer_keeping_stage():
    (stage,) = sk.load_recipe("distill-l3").stages
    assert isinstance(stage, DistillConfig) and stage.keep == [0, 4, 5] and stage.student is None
    assert stage.corpora == ["libdocs", "wordnet", "wiki"] and stage.freeze == ["embeddings.word_embeddings"]
    assert stage.time_schedule and stage.time_limit and stage.time_limit <= 1800
    assert stage.cache_teacher and stage.token_weight > 0 and not stage.hidden_weight and not stage.attention_weight
