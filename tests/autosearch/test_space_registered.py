"""The space of registered methods' own search entries: one optional stage per family, in the order
families compose, each method drawing its own options (named "<method>.<option>")."""

from __future__ import annotations

import optuna
import pytest

from slimkit.autosearch.space_registered import ORDER, RegisteredSpace, searchable
from slimkit.core.errors import SlimError
from slimkit.core.methods import MethodConfig


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


def test_shipped_methods_offer_entries():
    assert {"magnitude", "kmeans", "rtn", "int8"} <= set(searchable())
    assert all(cls.search_choices.__func__ is not MethodConfig.search_choices.__func__
               for cls in searchable().values())


def test_each_trial_is_a_recipe_in_family_order(lenet, digits_task):
    space = RegisteredSpace(lenet, digits_task)
    study = _study()
    seen = set()
    for _ in range(30):
        trial = study.ask()
        stages = space.suggest(trial)
        families = [ORDER.index(s.family) for s in stages]
        assert families == sorted(set(families))           # at most one stage per family, in order
        assert all(name.split(".")[0] in searchable() or name in {f.value for f in ORDER}
                   for name in trial.params)
        seen.update(s.method for s in stages)
        study.tell(trial, 0.0)
    assert {"magnitude", "kmeans"} <= seen


def test_labels_decide_whether_entries_fine_tune(lenet, digits_task):
    """A task with labelled batches gets fine-tuning choices; one without gets data-free configs."""
    study = _study()
    trial = study.ask()
    with_labels = searchable(["magnitude"])["magnitude"].search_choices(trial, lenet, digits_task)
    assert "magnitude.epochs" in trial.params and with_labels.epochs == trial.params["magnitude.epochs"]
    trial = study.ask()
    without = searchable(["magnitude"])["magnitude"].search_choices(trial, lenet, None)
    assert "magnitude.epochs" not in trial.params and without.epochs == 0 and without.schedule.value == "oneshot"


def test_one_named_method_is_always_used(lenet, digits_task):
    space = RegisteredSpace(lenet, digits_task, ["rtn"])
    study = _study()
    for _ in range(5):
        trial = study.ask()
        [stage] = space.suggest(trial)
        assert stage.method == "rtn" and 3 <= stage.bits <= 8
        study.tell(trial, 0.0)


@pytest.mark.parametrize("names, message", [(["no-such"], "unknown method 'no-such'"),
                                            (["recover"], "method 'recover' has no search entry")])
def test_bad_method_names_are_one_line_errors(lenet, digits_task, names, message):
    with pytest.raises(SlimError, match=message):
        RegisteredSpace(lenet, digits_task, names)


def test_a_language_model_space_reaches_every_llm_grade_method():
    """Issue 21: AWQ, SmoothQuant, GPTQ (group fallback per layer), Wanda and SparseGPT are all in
    the space a causal LM gets, and every candidate drawn builds as a valid config."""
    from llm_models import LlamaTask, tiny_llama
    from slimkit.autosearch.run import space_for

    model, task = tiny_llama(), LlamaTask()
    space = space_for(model, task)
    assert isinstance(space, RegisteredSpace)
    study = _study()
    seen = set()
    for _ in range(120):
        trial = study.ask()
        for stage in space.suggest(trial):
            seen.add(stage.method)
            if stage.method == "gptq":
                assert stage.bits in (3, 4) and stage.group_size in (32, 64, 128)
        study.tell(trial, 0.0)
    assert {"awq", "smoothquant", "gptq", "wanda", "sparsegpt"} <= seen
