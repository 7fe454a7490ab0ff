"""Deep k-Means: the spectral regulariser, vector k-means, the `vq` codec and the method on lenet5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.core.provenance import task_for
from slimkit.io.artifact import codec_chain
from slimkit.io.codecs import decode_chain, encode_chain
from slimkit.sharing.deep_kmeans import spectral_penalty, sub_vectors, top_singular_basis, vector_kmeans


def test_penalty_is_the_energy_outside_the_top_k_directions():
    x = torch.randn(300, 9, dtype=torch.float64)
    s = torch.linalg.svdvals(x)
    for k in (1, 4, 8):
        assert torch.isclose(spectral_penalty(x, k), 0.5 * (s[k:] ** 2).sum())
    assert float(spectral_penalty(x, 9)) < 1e-9          # zero once K >= d


def test_penalty_gradient_steps_concentrate_energy_in_k_directions():
    x = torch.randn(200, 9, requires_grad=True)
    start = float(spectral_penalty(x.detach(), 3))
    opt = torch.optim.SGD([x], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        spectral_penalty(x, 3, top_singular_basis(x, 3)).backward()
        opt.step()
    assert float(spectral_penalty(x.detach(), 3)) < 0.2 * start


def test_sub_vectors_views():
    conv = torch.randn(8, 4, 3, 3)
    assert sub_vectors(conv, "kernel").shape == (32, 9) and sub_vectors(conv, "row").shape == (96, 3)
    assert torch.equal(sub_vectors(conv, "kernel")[5], conv[1, 1].reshape(-1))
    assert sub_vectors(torch.randn(10, 12), linear_dim=4).shape == (30, 4)
    with pytest.raises(ValueError, match="does not divide"):
        sub_vectors(torch.randn(10, 10), linear_dim=4)


def test_vector_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 9)) * 10
    x = np.concatenate([c + 0.01 * rng.normal(size=(40, 9)) for c in centers])
    fit = vector_kmeans(x, 5, seed=1)
    assert fit.sse < 40 * 5 * 9 * 0.01**2 * 2
    assert len(set(fit.labels.tolist())) == 5


def test_vq_codec_round_trip_and_validation():
    codebook = np.random.default_rng(0).normal(size=(6, 9)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 6, size=64)
    w = codebook[labels].reshape(16, 4, 3, 3)
    stored, stages = encode_chain(w, [{"codec": "vq", "dim": 9}, {"codec": "entropy"}])
    assert np.array_equal(decode_chain(stored, stages), w)
    assert stored["0.codebook"].shape == (6, 9)
    bad = dict(stored, **{"0.codebook": stored["0.codebook"][:3]})
    with pytest.raises(SlimFormatError):
        decode_chain(bad, stages)
    with pytest.raises(SlimError, match="dim"):
        encode_chain(w, [{"codec": "vq", "dim": 7}])


@pytest.fixture(scope="module")
def lenet5_task():
    return task_for(sk.zoo.load("lenet5"))


def test_deep_kmeans_on_lenet5_saves_and_loads_exactly(lenet5_task, tmp_path):
    model = sk.zoo.load("lenet5")
    sk.share_(model, sk.make_config("deep-kmeans", clusters=16, finetune_epochs=2), data=lenet5_task)
    for name in ("conv1", "conv2"):
        conv = getattr(model, name)
        kernels = sub_vectors(conv.weight.detach(), "kernel")
        assert len(torch.unique(kernels, dim=0)) <= 16
        assert [s["codec"] for s in codec_chain(conv, "weight")] == ["vq", "entropy"]
    path = tmp_path / "dkm.slim"
    sk.save(model, path)
    loaded = sk.load(path, runtime="torch")
    x = lenet5_task.example_inputs(16)["x"]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the convolution weights shrink to codebooks + indices; the (untouched) fc layers dominate the file
    fp32 = sk.evaluate(sk.zoo.load("lenet5"), lenet5_task, timing=False).baseline_bytes
    assert path.stat().st_size < fp32 - 0.8 * 4 * (16 * 9 + 32 * 16 * 9)


def test_regulariser_needs_fewer_clusters_than_the_vector_length(lenet5_task):
    cfg = sk.make_config("deep-kmeans", clusters=9, reg_weight=0.1, reg_epochs=1)
    with pytest.raises(SlimError, match=r"zero when clusters \(9\) >= the kernel length of conv1 \(9\)"):
        sk.share_(sk.zoo.load("lenet5"), cfg, data=lenet5_task)


def test_regularised_retraining_runs_and_changes_the_weights(lenet5_task):
    model = sk.zoo.load("lenet5")
    before = sub_vectors(model.conv2.weight.detach().clone(), "kernel")
    cfg = sk.make_config("deep-kmeans", clusters=4, reg_weight=1.0, reg_epochs=2, finetune_epochs=0)
    sk.share_(model, cfg, data=lenet5_task)
    after = sub_vectors(model.conv2.weight.detach(), "kernel")
    assert not torch.equal(before, after) and len(torch.unique(after, dim=0)) <= 4


def test_models_without_convolutions_need_explicit_linear_targets():
    with pytest.raises(SlimError, match="no Conv2d layers"):
        sk.share_(sk.zoo.load("lenet-300-100"), sk.make_config("deep-kmeans", finetune_epochs=0))
    model = sk.zoo.load("lenet-300-100")
    sk.share_(model, sk.make_config("deep-kmeans", clusters=32, targets=["fc1"], finetune_epochs=0))
    assert len(torch.unique(sub_vectors(model.fc1.weight.detach(), linear_dim=4), dim=0)) <= 32
