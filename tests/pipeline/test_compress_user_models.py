"""`sk.compress` on models slimkit has never seen (tests/user_models.py), with a DataLoader and a
metric, as a user would: every run ends within max_drop, says it did not (`within_budget=False`),
or is refused in one line; sizes are against the original's fp32 bytes on disk."""

from __future__ import annotations

import inspect

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk
from slimkit.core.torch_utils import num_threads
from user_models import ARCHITECTURES, accuracy, loader, trained


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and never stalls on a busy machine."""
    with num_threads(1):
        yield


def fp32_file_bytes(model, tmp_path) -> int:
    """The original as a real fp32 safetensors file on disk."""
    path = tmp_path / "original.safetensors"
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()},
              str(path))
    return path.stat().st_size


def check(kind: str, recipe, tmp_path, max_drop: float | None = None) -> dict | str:
    """Compress a trained `kind` model; assert what must hold of any result; return it (or the
    one-line refusal)."""
    original = trained(kind)
    out = tmp_path / f"{kind}.slim"
    before = {k: v.clone() for k, v in original.state_dict().items()}
    try:
        model, result = sk.compress(original, recipe, data=loader(), metric=accuracy, out=out, max_drop=max_drop)
    except sk.SlimError as exc:
        assert "\n" not in str(exc) and str(exc)
        return str(exc)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())   # compress copies
    baseline = fp32_file_bytes(original, tmp_path)
    assert result["baseline_bytes"] == baseline
    assert result["bytes"] == out.stat().st_size
    assert result["ratio"] == round(baseline / result["bytes"], 3) > 1
    assert result["baseline_score"] == round(accuracy(original), 6)
    assert result["within_budget"] == (result["drop"] <= result["max_drop"])
    assert result["drop"] == pytest.approx(100 * (result["baseline_score"] - result["score"]), abs=1e-3)
    # the file alone: reloaded into a fresh architecture, measured against the same original
    again = sk.evaluate(sk.load(out, model=ARCHITECTURES[kind](), runtime="torch"), data=loader(), metric=accuracy,
                        path=out, timing=False)
    assert again.baseline_bytes == baseline and again.bytes == result["bytes"]
    assert again.score == pytest.approx(result["score"], abs=2e-3)
    assert sk.evaluate(model, data=loader(), metric=accuracy, timing=False).baseline_bytes == baseline
    return result


FAST = [
    ("mlp", "int8"), ("cnn", "int8"), ("gru", "int8"),
    ("mlp", [sk.KMeansConfig(bits=5)]), ("cnn", [sk.KMeansConfig(bits=5)]),
    ("mlp", [sk.NormPruningConfig(ratio=0.3, epochs=2)]),
    ("mlp", [sk.MagnitudePruningConfig(sparsity=0.6, epochs=3, schedule="gradual", steps=3)]),
]


@pytest.mark.parametrize(("kind", "recipe"), FAST, ids=lambda v: v if isinstance(v, str) else v[0].method)
def test_compress_a_user_model_within_the_budget(kind, recipe, tmp_path):
    result = check(kind, recipe, tmp_path)
    assert isinstance(result, dict) and result["within_budget"], result
    assert result["score_name"] == "accuracy" and result["max_drop"] == 1.0


def test_a_structured_prune_that_cannot_trace_the_model_is_refused_in_one_line(tmp_path):
    message = check("gru", [sk.StructuredPruningConfig(ratio=0.3)], tmp_path)
    assert isinstance(message, str) and "no prunable group" in message


def test_a_result_over_the_budget_says_so(tmp_path):
    result = check("mlp", [sk.LowRankConfig(rank=2, mode="svd")], tmp_path)
    assert not result["within_budget"] and result["drop"] > 1.0
    result = check("mlp", [sk.LowRankConfig(rank=2, mode="svd")], tmp_path / "..", max_drop=100)
    assert result["within_budget"] and result["max_drop"] == 100


def test_a_recipe_that_touches_nothing_is_an_error_not_1x(tmp_path):
    with pytest.raises(sk.SlimError, match="changed nothing"):
        sk.compress(trained("mlp"), [sk.Int8Config(ignore=["re:.*"])], data=loader())
    assert not list(tmp_path.iterdir())


def test_without_a_metric_the_score_is_accuracy_on_held_back_batches(tmp_path):
    model, result = sk.compress(trained("mlp"), "int8", data=loader())
    assert result["score_name"] == "accuracy" and result["out"] is None
    assert result["within_budget"] and 0.9 < result["score"] <= 1.0
    unlabelled = [x for x, _ in loader()]
    _, result = sk.compress(trained("mlp"), "int8", data=unlabelled)
    assert result["score_name"] == "agreement" and result["baseline_score"] == 1.0 and result["within_budget"]


def test_a_user_model_without_data_is_refused_not_silently_broken():
    with pytest.raises(sk.SlimError, match="compress needs data="):
        sk.compress(trained("mlp"), "int8")
    with pytest.raises(sk.SlimError, match="90% sparsity in one shot"):
        sk.prune_(trained("mlp"), sk.MagnitudePruningConfig(sparsity=0.9))
    with pytest.raises(sk.SlimError, match="90% sparsity in one shot"):
        sk.prune_(trained("mlp"), sk.MagnitudePruningConfig(sparsity=0.9), data=[x for x, _ in loader()])
    oneshot = sk.prune_(trained("mlp"), sk.MagnitudePruningConfig(sparsity=0.9, epochs=0))   # asked for: done
    assert (oneshot.fc1.weight == 0).float().mean() > 0.85


@pytest.mark.parametrize("recipe", ["kmeans", "prune-magnitude", "qat-int4", "hashed"])
def test_labels_that_are_no_class_of_the_model_are_refused_in_one_line(recipe):
    """Ten-class labels for a model with four outputs: every training method says so, naming the
    label and the output count, instead of torch's "Target 7 is out of bounds" from deep inside."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    data = [(x, y) for x, y in loader()]
    assert max(int(y.max()) for _, y in data) == 9
    with pytest.raises(sk.SlimError) as refused:
        sk.compress(model, recipe, data=data, max_drop=100)
    message = str(refused.value)
    assert "\n" not in message and "the model gives 4 outputs per sample" in message
    assert "labels must be class indices 0-3" in message and int(message.split(" is ")[1].split(",")[0]) >= 4


def test_magnitude_with_labels_and_epochs_unset_prunes_gradually_and_keeps_accuracy():
    model = trained("mlp")
    base = accuracy(model)
    sk.prune_(model, sk.MagnitudePruningConfig(sparsity=0.8, scope="global"), data=loader())
    weights = torch.cat([m.weight.flatten() for m in (model.fc1, model.fc2, model.out)])
    assert (weights == 0).float().mean() == pytest.approx(0.8, abs=0.01)
    assert accuracy(model) >= base - 0.02


def test_every_entry_point_takes_data_and_metric(tmp_path):
    model = trained("mlp")
    m = sk.evaluate(model, data=loader(), metric=accuracy, timing=False)
    assert m.score == round(accuracy(model), 6) and m.score_name == "accuracy" and m.ratio < 1.1
    sk.quantize_(model, sk.Int8Config(), data=loader(), metric=accuracy)
    after = sk.evaluate(model, data=loader(), timing=False)
    assert after.ratio > 3 and after.baseline_bytes == m.baseline_bytes   # against the original, not itself
    net = sk.run_recipe(trained("mlp"), sk.load_recipe("int8"), data=loader(), metric=accuracy)
    assert sk.evaluate(net, data=loader(), timing=False).ratio > 3
    net = sk.share_(trained("mlp"), sk.LowRankConfig(budget=0.5, finetune_epochs=1), data=loader())
    assert net.fc1.__class__ is not torch.nn.Linear or sk.evaluate(net, data=loader(), timing=False).ratio > 1.2
    small = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with pytest.raises(sk.SlimError, match=r"student's forward takes \(input\) but the batches give \(pixels\)"):
        sk.distill(trained("mlp"), small, loader(), sk.DistillConfig(epochs=1))
    student = sk.distill(trained("mlp"), Small(), loader(), sk.DistillConfig(epochs=3), metric=accuracy)
    assert student.__dict__["slimkit_distill"]["epochs_run"] == 3
    assert sk.evaluate(student, data=loader(), timing=False).baseline_bytes == m.baseline_bytes
    assert {"data", "metric"} <= set(inspect.signature(sk.search).parameters)


class Small(torch.nn.Module):
    """A student for NormMLP: its input has the teacher's name."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 32), torch.nn.Linear(32, 10)

    def forward(self, pixels):
        return self.fc2(torch.relu(self.fc1(pixels)))


SLOW = [(kind, name) for kind in ("mlp", "cnn", "gru")
        for name in ("magnitude", "structured", "kmeans", "lowrank", "combined")]
RECIPES = {
    "magnitude": lambda: [sk.MagnitudePruningConfig(sparsity=0.7, scope="global")],     # epochs unset: gradual
    "structured": lambda: [sk.NormPruningConfig(ratio=0.3, epochs=3)],
    "kmeans": lambda: [sk.KMeansConfig(bits=4, finetune_epochs=2)],
    "lowrank": lambda: [sk.LowRankConfig(budget=0.5, finetune_epochs=3)],
    "combined": lambda: [sk.MagnitudePruningConfig(sparsity=0.6, scope="global"), sk.KMeansConfig(bits=5)],
}


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), SLOW)
def test_matrix_ends_within_budget_says_it_did_not_or_refuses(kind, name, tmp_path):
    result = check(kind, RECIPES[name](), tmp_path)
    assert isinstance(result, str) or result["within_budget"] or result["drop"] > result["max_drop"]


@pytest.mark.slow
def test_search_takes_a_user_model_with_its_data_and_metric(tmp_path):
    result = sk.search(trained("mlp"), max_drop=1.0, out=tmp_path / "search", budget=120, max_trials=3,
                       data=loader(), metric=accuracy, methods=["int8", "kmeans"])
    baseline = fp32_file_bytes(trained("mlp"), tmp_path)
    assert result.best is not None and (tmp_path / "search" / "best.slim").is_file()
    assert result.best["ratio"] == pytest.approx(baseline / result.best["bytes"], rel=0.01) and result.best["ratio"] > 3
