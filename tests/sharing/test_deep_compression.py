"""The `deep-compression` recipe: magnitude pruning -> k-means sharing -> Huffman coding."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk

FP32_BYTES = 202_888  # lenet-300-100 as fp32 safetensors


def _needs_pruning():
    if "magnitude" not in sk.methods():
        pytest.skip("the `magnitude` pruning method is not registered yet")


@pytest.fixture(scope="module")
def compressed(lenet_trained, digits_task, tmp_path_factory):
    import copy

    _needs_pruning()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = copy.deepcopy(lenet_trained)
    model.__dict__["slimkit_base"] = dict(lenet_trained.__dict__["slimkit_base"])
    model.__dict__.pop("slimkit_edits", None)
    model = sk.run_recipe(model, sk.load_recipe("deep-compression"), digits_task)
    path = tmp_path_factory.mktemp("dc") / "lenet-dc.slim"
    size = sk.save(model, path)
    yield model, path, size
    torch.set_num_threads(threads)


def test_deep_compression_round_trip_and_accuracy(compressed, lenet_trained, digits_task):
    from slimkit.io.artifact import codec_chain

    model, path, size = compressed
    loaded = sk.load(path, runtime="torch")
    x = digits_task.example_inputs(64)["x"]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for name in ("fc1", "fc2", "fc3"):
        chain = [s["codec"] for s in codec_chain(getattr(loaded, name), "weight")]
        assert chain == ["sparse", "cast", "palette", "entropy"]
        assert (getattr(loaded, name).weight == 0).float().mean() > 0.8
    assert digits_task.score(loaded) >= digits_task.score(lenet_trained) - 0.005
    assert FP32_BYTES / size >= 50, f"{size} B is only {FP32_BYTES / size:.1f}x (target: 50x)"
