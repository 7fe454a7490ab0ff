"""A model loaded inside `torch.inference_mode()` (its buffers are inference tensors, which keep no
version counter) runs every compressed layer kind: the decode caches key on `version_of`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.torch_utils import version_of
from slimkit.nn.kernels import rel_err


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 8 * 8, 512)
        self.fc2 = nn.Linear(512, 256)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def test_inference_tensors_have_no_version_but_a_key():
    t = torch.zeros(3)
    assert version_of(t) == 0
    t.add_(1)
    assert version_of(t) == 1
    with torch.inference_mode():
        assert version_of(torch.zeros(3)) == -1


@pytest.mark.parametrize("recipe", ["int8", "int4-rtn", "kmeans", "hashed"])
def test_a_model_loaded_in_inference_mode_runs_at_every_batch(recipe, tmp_path):
    torch.manual_seed(0)
    model = _Net().eval()
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 256, (4,))) for _ in range(4)]
    out = tmp_path / f"{recipe}.slim"
    compressed, _ = sk.compress(model, recipe, data=data, out=out, max_drop=100)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want = compressed(x)
    with torch.inference_mode():
        loaded = sk.load(out)
        assert any(t.is_inference() for t in loaded.state_dict().values()), "loaded as inference tensors"
        for rows in (1, 1, 1, 4, 1, 4):
            y = loaded(x[:rows])
        # the kernels chosen per batch shape agree within their tolerance (slimkit.nn.kernels)
        assert rel_err(y, want) < 1e-2
