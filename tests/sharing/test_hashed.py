"""HashedNets: the hash, the `HashedLinear` runtime module and the `hashed` method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.nn.hashed import HashedLinear
from slimkit.nn.hashing import hash_indices, project
from slimkit.sharing.api import HashedConfig, ShareConfigError


def test_hash_is_pinned_and_deterministic():
    index, sign = hash_indices(3, 4, 5, 7)
    # pinned values: a change here breaks every saved HashedNets file
    assert index.ravel().tolist() == [4, 2, 0, 2, 2, 2, 1, 0, 3, 1, 0, 4]
    assert sign.ravel().tolist() == [1, -1, -1, -1, -1, -1, 1, -1, -1, -1, 1, -1]
    again, _ = hash_indices(3, 4, 5, 7)
    assert np.array_equal(index, again)
    other, _ = hash_indices(3, 4, 5, 8)
    assert not np.array_equal(index, other)


def test_hash_spreads_evenly_with_balanced_signs():
    index, sign = hash_indices(300, 100, 3750, 1)
    counts = np.bincount(index.ravel(), minlength=3750)
    assert counts.min() >= 1 and abs(counts.mean() - 8) < 1e-9 and counts.max() < 30
    assert abs(float(sign.mean())) < 0.03


def test_projection_is_the_bucket_mean():
    index, sign = hash_indices(10, 10, 7, 0)
    w = np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32)
    real = project(w, index, sign, 7)
    for k in range(7):
        members = index == k
        assert real[k] == pytest.approx(float((sign * w)[members].mean()), abs=1e-6)


def test_hashed_linear_forward_and_gradients():
    torch.manual_seed(0)
    layer = HashedLinear(16, 12, buckets=24, seed=5)
    index, sign = layer.hashes()
    x = torch.randn(4, 16)
    expected = x @ (layer.weight.detach()[index] * sign).T + layer.bias.detach()
    assert torch.allclose(layer(x), expected, atol=1e-6)
    layer(x).sum().backward()
    assert layer.weight.grad.shape == (24,) and layer.weight.grad.abs().sum() > 0
    assert [k for k, _ in layer.state_dict().items()] == ["weight", "bias"]
    assert "buckets=24" in repr(layer)


def test_hashed_linear_refuses_bad_sizes():
    with pytest.raises(ValueError, match="buckets"):
        HashedLinear(4, 4, buckets=17)
    with pytest.raises(ValueError, match="seed"):
        HashedLinear(4, 4, buckets=4, seed=-1)


def test_hashed_method_saves_only_real_parameters(lenet, digits_task, tmp_path):
    model = sk.share_(lenet, HashedConfig(ratio=0.125, finetune_epochs=2), data=digits_task)
    assert isinstance(model.fc1, HashedLinear) and model.fc1.buckets == 2400
    assert model.fc2.buckets == 3750 and model.fc3.buckets == 125
    path = tmp_path / "h.slim"
    size = sk.save(model, path)
    state = sk.load_state_dict(path)
    assert state["fc2.weight"].shape == (3750,)
    assert size < (2400 + 3750 + 125 + 410) * 4 + 2500  # real params + biases + header
    loaded = sk.load(path, runtime="torch")
    x = digits_task.example_inputs(64)["x"]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_hash_budget_larger_than_the_layer_is_refused(lenet, digits_task):
    with pytest.raises(ShareConfigError, match=r"buckets 1001 for fc3 must be in 1\.\.1000") as info:
        sk.share_(lenet, HashedConfig(buckets=1001, targets="fc3", finetune_epochs=0), data=digits_task)
    assert "\n" not in str(info.value)
    with pytest.raises(ShareConfigError, match="ratio"):
        HashedConfig(ratio=1.5)


def test_lying_spec_is_a_format_error(lenet, digits_task, tmp_path):
    from slimkit.io.artifact import read_raw, write_raw

    model = sk.share_(lenet, HashedConfig(targets="fc3", finetune_epochs=0), data=digits_task)
    path = tmp_path / "h.slim"
    sk.save(model, path)
    arrays, manifest = read_raw(path)
    for edit in manifest["edits"]:
        edit["spec"]["buckets"] = 10**6
    write_raw(path, arrays, manifest)
    with pytest.raises(sk.SlimFormatError):
        sk.load(path)


def test_a_spec_claiming_a_huge_virtual_weight_is_refused_before_allocating(lenet, digits_task, tmp_path):
    """A small file whose hashed spec claims 10^11 virtual weights (400 GB at load) is refused by
    the runtime-bytes budget, with the layer named; the hashes are never computed."""
    from slimkit.io.artifact import read_raw, write_raw

    model = sk.share_(lenet, HashedConfig(targets="fc3", finetune_epochs=0), data=digits_task)
    path = tmp_path / "h.slim"
    sk.save(model, path)
    arrays, manifest = read_raw(path)
    for edit in manifest["edits"]:
        edit["spec"]["in"], edit["spec"]["out"] = 10**6, 10**5
    write_raw(path, arrays, manifest)
    with pytest.raises(sk.SlimFormatError, match=r"layer 'fc3' needs \d+ bytes to run"):
        sk.load(path)


def test_chunked_hashes_equal_the_whole_array_computation():
    from slimkit.nn import hashing

    index, sign = hash_indices(1100, 1000, buckets=5000, seed=11)     # 1.1M positions: two slices
    flat = np.arange(1100 * 1000, dtype=np.uint64) ^ (np.uint64(11) << np.uint64(32))
    mixed = hashing.splitmix64(flat)
    assert np.array_equal(index.reshape(-1), (mixed % np.uint64(5000)).astype(np.int64))
    bits = hashing.splitmix64(mixed ^ np.uint64(0x5851F42D4C957F2D)) >> np.uint64(63)
    assert np.array_equal(sign.reshape(-1), (1.0 - 2.0 * bits.astype(np.float32)))


@pytest.mark.slow
def test_hashed_recipe_at_one_eighth(lenet, digits_task, tmp_path):
    base = digits_task.score(lenet)
    model = sk.run_recipe(lenet, sk.load_recipe("hashed"), digits_task)
    path = tmp_path / "h.slim"
    sk.save(model, path)
    assert digits_task.score(sk.load(path)) >= base - 0.005
