"""Magnitude and N:M pruning on lenet-300-100: configs, masks, storage, save/load."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.io.artifact import codec_chain
from slimkit.pruning.api import MagnitudePruningConfig, NMPruningConfig
from slimkit.pruning.masks import sparsity_of


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1])
def test_sparsity_out_of_range_is_a_one_line_value_error(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)") as info:
        MagnitudePruningConfig(sparsity=bad)
    assert "\n" not in str(info.value)


def test_scope_and_schedule_are_word_choices():
    assert MagnitudePruningConfig(scope="global", schedule="gradual", epochs=1).scope.value == "global"
    with pytest.raises(ValueError):
        MagnitudePruningConfig(scope="row")
    with pytest.raises(ValueError, match="needs epochs"):
        MagnitudePruningConfig(schedule="gradual")
    with pytest.raises(ValueError):
        MagnitudePruningConfig(unknown=1)


def test_selector_matching_nothing_is_an_error(lenet, digits_task):
    with pytest.raises(SlimError, match="fc9"):
        sk.prune_(lenet, MagnitudePruningConfig(targets="fc9"), digits_task)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_oneshot_prunes_stores_sparse_and_reloads(scope, lenet, digits_task, tmp_path):
    model = sk.prune_(lenet, MagnitudePruningConfig(sparsity=0.9, scope=scope, epochs=0), digits_task)
    weights = [model.fc1.weight, model.fc2.weight, model.fc3.weight]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.9 * total) if scope == "global" else abs(zeros / total - 0.9) < 1e-3
    assert all(type(m) is torch.nn.Linear for m in (model.fc1, model.fc2, model.fc3))
    assert codec_chain(model.fc2, "weight") == [{"codec": "sparse"}]
    size = sk.save(model, tmp_path / "m.slim")
    loaded = sk.load(tmp_path / "m.slim")
    x = digits_task.example_inputs(32)["x"]
    assert torch.equal(loaded(x), model(x))
    assert size < 0.25 * sk.evaluate(model, digits_task, timing=False).baseline_bytes
    # saving the loaded model again writes the same encoding
    assert sk.save(loaded, tmp_path / "again.slim") == size


@pytest.mark.parametrize("schedule", ["gradual", "iterative"])
def test_schedules_with_finetuning_hold_masks(schedule, lenet, digits_task):
    before = digits_task.validation_score(lenet)
    cfg = MagnitudePruningConfig(sparsity=0.8, scope="global", schedule=schedule, steps=4, epochs=4, lr=2e-3)
    model = sk.prune_(lenet, cfg, digits_task)
    sp = model.__dict__["slimkit_sparsity"]
    total = sum(m.weight.numel() for m in (model.fc1, model.fc2, model.fc3))
    zeros = sum(int((m.weight == 0).sum()) for m in (model.fc1, model.fc2, model.fc3))
    assert zeros == round(0.8 * total) and set(sp) == {"fc1", "fc2", "fc3"}
    assert digits_task.validation_score(model) > before - 0.05


def test_float16_storage_is_exact_after_reload(lenet, digits_task, tmp_path):
    cfg = MagnitudePruningConfig(sparsity=0.9, scope="global", value_dtype="float16", bias_dtype="float16", epochs=0)
    model = sk.prune_(lenet, cfg, digits_task)
    assert codec_chain(model.fc1, "weight")[-1] == {"codec": "cast", "to": "float16"}
    sk.save(model, tmp_path / "h.slim")
    x = digits_task.example_inputs(16)["x"]
    assert torch.equal(sk.load(tmp_path / "h.slim")(x), model(x))


def test_nm_2_4(lenet, digits_task, tmp_path):
    model = sk.prune_(lenet, NMPruningConfig(), digits_task)
    for m in (model.fc1, model.fc2, model.fc3):
        assert m.weight.reshape(-1, 4).ne(0).sum(1).le(2).all()
        assert sparsity_of(m.weight) >= 0.5
    size = sk.save(model, tmp_path / "nm.slim")
    x = digits_task.example_inputs(8)["x"]
    assert torch.equal(sk.load(tmp_path / "nm.slim")(x), model(x))
    assert size < 0.6 * sk.evaluate(model, digits_task, timing=False).baseline_bytes
    with pytest.raises(ValueError, match="n must be"):
        NMPruningConfig(n=4, m=4)


@pytest.mark.slow
def test_recipe_prune_magnitude_meets_targets(lenet, digits_task, tmp_path):
    """Issue 4 target: >= 12x fewer nonzero weights, file >= 10x smaller, <= 0.3 pt test drop."""
    base = digits_task.score(lenet)
    model = sk.run_recipe(lenet, sk.load_recipe("prune-magnitude"), digits_task)
    weights = [model.fc1.weight, model.fc2.weight, model.fc3.weight]
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    assert sum(w.numel() for w in weights) / nonzero >= 12
    m = sk.evaluate(model, digits_task, path=tmp_path / "p.slim" if sk.save(model, tmp_path / "p.slim")
                    else None, timing=False)
    assert m.ratio >= 10
    assert 100 * (base - m.score) <= 0.3
