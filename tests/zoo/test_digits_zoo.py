from __future__ import annotations

import torch

import slimkit as sk
from slimkit.zoo import cache
from slimkit.zoo.digits import load_digits
from slimkit.zoo.train import accuracy


def test_split_is_deterministic_disjoint_and_stratified():
    d = load_digits()
    assert (len(d.train), len(d.val), len(d.test)) == (898, 179, 720)
    rows = [tuple(r.tolist()) for s in (d.train, d.val, d.test) for r in s.x]
    assert len(rows) == 1797
    for split in (d.train, d.val, d.test):
        counts = torch.bincount(split.y, minlength=10).float() / len(split)
        assert counts.min() > 0.08 and counts.max() < 0.12
    load_digits.cache_clear()
    again = load_digits()
    assert torch.equal(again.test.x, d.test.x) and torch.equal(again.train.y, d.train.y)


def test_builtin_models_reach_97_percent(lenet_trained, lenet5_trained):
    d = load_digits()
    assert accuracy(lenet_trained, d.test) >= 0.97
    assert accuracy(lenet5_trained, d.test) >= 0.97


def test_cache_is_used_and_corruption_triggers_retraining(tmp_path, monkeypatch):
    from slimkit.zoo import train

    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda m, d, **kw: real_fit(m, d, **{**kw, "epochs": 2}))
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    first = sk.zoo.load("lenet-300-100")
    path = tmp_path / "zoo" / "lenet-300-100-v1.safetensors"
    assert path.is_file()
    cached = cache.load_cached("lenet-300-100-v1")
    assert cached is not None and torch.equal(cached["fc1.weight"], first.fc1.weight)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF  # flip bits inside a weight
    path.write_bytes(bytes(blob))
    assert cache.load_cached("lenet-300-100-v1") is None
    second = sk.zoo.load("lenet-300-100")  # retrained deterministically
    assert torch.equal(second.fc1.weight, first.fc1.weight)
    assert cache.load_cached("lenet-300-100-v1") is not None


def test_unknown_builtin_is_a_user_error():
    import pytest

    with pytest.raises(sk.SlimError, match="unknown builtin model 'nope'"):
        sk.zoo.load("nope")
    with pytest.raises(sk.SlimError, match="did you mean builtin:lenet5"):
        sk.resolve("lenet5")
