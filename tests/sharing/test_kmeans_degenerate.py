"""k-means on degenerate layers (issue 22): all-zero, constant, beyond float16's range or below its
normal range; the artifact loads back to the same outputs, in memory and streamed."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import slimkit as sk
from cli_runner import cli
from slimkit.core.methods import apply_, make_config
from slimkit.sharing.apply_kmeans import fits_float16


@pytest.mark.parametrize("fill", [0.0, 0.5, -3.0, 1e5, 1e-9])
@pytest.mark.parametrize("options", [{"bits": 4}, {"bits": 4, "bias_bits": 4}, {"bits": 2, "solver": "optimal"},
                                     {"bits": 4, "coding": "bitpack"}, {"bits": 4, "coding": "ans"}])
def test_a_constant_layer_saves_and_loads_to_the_same_outputs(tmp_path, fill, options):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        base[0].weight.fill_(fill)
        base[0].bias.fill_(fill)
    model = copy.deepcopy(base)
    apply_(model, make_config("kmeans", **options))
    sk.save(model, tmp_path / "m.slim")
    back = sk.load(tmp_path / "m.slim", model=copy.deepcopy(base), runtime="torch")  # bit-exact
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert torch.equal(back[0].weight, base[0].weight)      # a constant is kept exactly, never inf or 0


def test_fits_float16():
    assert fits_float16(torch.tensor([0.0, 0.5, -65504.0]))
    assert fits_float16(torch.zeros(3)) and fits_float16(torch.tensor([1e-6, 1e-3]))
    assert not fits_float16(torch.tensor([1e5]))
    assert not fits_float16(torch.tensor([1e-9, -2e-9]))


def test_streamed_constant_and_zero_tensors_load_back(monkeypatch, capsys, tmp_path):
    tensors = {"zero.weight": torch.zeros(64, 64), "const.weight": torch.full((64, 64), 0.25),
               "big.weight": torch.full((64, 64), 1e5)}
    save_file(tensors, str(tmp_path / "ck.safetensors"))
    (tmp_path / "k.yaml").write_text("stages:\n  - method: kmeans\n    bits: 4\n    finetune_epochs: 0\n")
    code, _, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "ck.safetensors"), "--recipe",
                       str(tmp_path / "k.yaml"), "--out", str(tmp_path / "o.slim"))
    assert code == 0, err
    state = sk.load_state_dict(tmp_path / "o.slim")
    for name, value in tensors.items():
        assert torch.equal(state[name], value), name
