"""The `kmeans` method on lenet-300-100: exact shared weights, codecs, composition with pruning."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.io.artifact import codec_chain, set_codec
from slimkit.sharing.api import KMeansConfig, ShareConfigError


def _save_load(model, tmp_path, name="m"):
    path = tmp_path / f"{name}.slim"
    size = sk.save(model, path)
    return size, sk.load(path, runtime="torch")


def test_weights_equal_centroids_and_round_trip(lenet, digits_task, tmp_path):
    sk.share_(lenet, KMeansConfig(bits=3, bias_bits=4), data=digits_task)
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(lenet, name)
        assert layer.weight.unique().numel() <= 8
        assert layer.bias.unique().numel() <= 16
        assert [s["codec"] for s in codec_chain(layer, "weight")] == ["cast", "palette", "entropy"]
    size, loaded = _save_load(lenet, tmp_path)
    x = digits_task.example_inputs(64)["x"]
    with torch.no_grad():
        assert torch.equal(lenet(x), loaded(x))
    assert size < 202_888 / 9  # ~2.4 bits per weight + codebooks
    assert digits_task.score(loaded) > 0.95


def test_huffman_beats_bitpack(lenet, digits_task, tmp_path):
    import copy

    other = copy.deepcopy(lenet)
    other.__dict__["slimkit_base"] = dict(lenet.__dict__["slimkit_base"])
    sk.share_(lenet, KMeansConfig(bits=5), data=digits_task)
    sk.share_(other, KMeansConfig(bits=5, coding="bitpack"), data=digits_task)
    huff, _ = _save_load(lenet, tmp_path, "h")
    packed, _ = _save_load(other, tmp_path, "b")
    assert huff < packed


def test_reclustering_an_encoded_tensor_is_refused(lenet, digits_task):
    sk.share_(lenet, KMeansConfig(bits=2, targets=["fc2"]), data=digits_task)
    with pytest.raises(sk.SlimError, match="already encoded"):
        sk.share_(lenet, KMeansConfig(bits=2, targets=["fc2"]), data=digits_task)


def test_centroid_gradient_is_the_sum_over_its_cluster():
    from slimkit.sharing.apply_kmeans import cluster_tensor

    layer = torch.nn.Linear(20, 10)
    shared = cluster_tensor(layer, "fc", "weight", 2, "linear", "lloyd", 50, 0)
    shared.centroids.requires_grad_(True)
    upstream = torch.randn(10, 20)
    (shared.rebuild() * upstream).sum().backward()
    expected = torch.zeros(shared.centroids.numel()).index_add_(0, shared.labels, upstream.reshape(-1))
    assert torch.allclose(shared.centroids.grad, expected)


def test_fine_tuned_codebooks_stay_exact(lenet, digits_task, tmp_path):
    import copy

    plain = copy.deepcopy(lenet)
    sk.share_(plain, KMeansConfig(bits=2, targets=["fc2"]), data=digits_task)
    sk.share_(lenet, KMeansConfig(bits=2, targets=["fc2"], finetune_epochs=2), data=digits_task)
    assert lenet.fc2.weight.unique().numel() <= 4
    assert digits_task.validation_score(lenet) >= digits_task.validation_score(plain)
    _, loaded = _save_load(lenet, tmp_path)
    x = digits_task.example_inputs(32)["x"]
    with torch.no_grad():
        assert torch.equal(lenet(x), loaded(x))


def test_pruned_weights_cluster_only_nonzeros(lenet, digits_task, tmp_path):
    from slimkit.io.codecs import CODECS

    assert "sparse" in CODECS, "importing slimkit registers every codec"
    with torch.no_grad():
        w = lenet.fc1.weight
        w[w.abs() < w.abs().quantile(0.9)] = 0.0
    set_codec(lenet.fc1, "weight", [{"codec": "sparse"}, {"codec": "cast", "to": "float16"}])
    zeros = lenet.fc1.weight == 0
    sk.share_(lenet, KMeansConfig(bits=4, targets="fc1"), data=digits_task)
    assert torch.equal(lenet.fc1.weight == 0, zeros)
    assert lenet.fc1.weight[~zeros].unique().numel() <= 16
    chain = [s["codec"] for s in codec_chain(lenet.fc1, "weight")]
    assert chain == ["sparse", "cast", "palette", "entropy"]
    size, loaded = _save_load(lenet, tmp_path)
    x = digits_task.example_inputs(32)["x"]
    with torch.no_grad():
        assert torch.equal(lenet(x), loaded(x))


@pytest.mark.parametrize("bad", [{"bits": 1}, {"bits": 9}, {"bias_bits": 0}, {"finetune_epochs": -1}])
def test_bad_options_give_one_line_errors(bad):
    with pytest.raises(ShareConfigError) as info:
        KMeansConfig(**bad)
    assert "\n" not in str(info.value) and next(iter(bad)) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_shipped_recipes_parse():
    from slimkit.pipeline.recipes import shipped

    for name in ("kmeans", "lowrank", "hashed"):
        if name in shipped():
            recipe = sk.load_recipe(name)
            assert recipe.stages and recipe.description


def test_kmeans_recipe_size_and_accuracy(lenet, digits_task, tmp_path):
    base_test, base_val = digits_task.score(lenet), digits_task.validation_score(lenet)
    model = sk.run_recipe(lenet, sk.load_recipe("kmeans"), digits_task)
    size, loaded = _save_load(model, tmp_path)
    assert size < 202_888 / 8
    assert digits_task.score(loaded) >= base_test - 0.01
    assert digits_task.validation_score(loaded) >= base_val - 0.012
