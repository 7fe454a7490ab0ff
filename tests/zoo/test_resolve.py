"""Model references and untrusted pickles."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickles_are_refused_and_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    with pytest.raises(sk.SlimError, match="pickled checkpoints can run code"):
        sk.resolve(str(path))
    with pytest.raises(sk.SlimError, match="not a plain weights checkpoint"):
        sk.resolve(str(path), trust_pickle=True)  # opt-in still uses weights_only=True
    assert not marker.exists(), "code inside the pickle ran"


def test_trusted_plain_state_dict_loads_and_saves(tmp_path):
    state = {"fc.weight": torch.randn(4, 3), "fc.bias": torch.zeros(4), "steps": torch.tensor(3)}
    torch.save(state, tmp_path / "w.pt")
    model = sk.resolve(str(tmp_path / "w.pt"), trust_pickle=True)
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])
    sk.save(model, tmp_path / "w.slim")
    assert torch.equal(sk.load_state_dict(tmp_path / "w.slim")["fc.weight"], state["fc.weight"])
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(sk.SlimError, match="expected a dict of tensors"):
        sk.resolve(str(tmp_path / "list.pt"), trust_pickle=True)


def test_weights_only_safetensors_round_trip(tmp_path):
    state = {"a.b.weight": torch.randn(5, 2), "c": torch.arange(3)}
    save_file(state, str(tmp_path / "ck.safetensors"))
    model = sk.resolve(str(tmp_path / "ck.safetensors"))
    path = tmp_path / "ck.slim"
    sk.save(model, path)
    loaded = sk.load(path)
    assert {k: v.tolist() for k, v in loaded.state_dict().items()} == {k: v.tolist() for k, v in state.items()}
    with pytest.raises(sk.SlimError, match="no architecture"):
        loaded(torch.zeros(1))


def test_unknown_file_type(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(sk.SlimError, match="unknown model file type"):
        sk.resolve(str(tmp_path / "m.onnx"))
