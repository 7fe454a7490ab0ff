"""Reload-and-verify: `compress(..., out=)` reads the written file back and compares its outputs with
the compressed model's before the file takes the name `out`; a writer that loses a value is an error
and leaves no file (and an existing `out` untouched)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.io.codec_palette import Palette
from slimkit.pipeline.compress import RunOptions, compress
from slimkit.pipeline.verify import compare, meta_copy

OPTIONS = RunOptions(timing=False)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 16, generator=g) for _ in range(4)]


class Branchy(nn.Module):
    """A forward torch.fx cannot trace (data-dependent branch): saved as base kind "user"."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if h.sum() > -1e9:
            h = h * 1.0
        return self.fc2(h)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_good_artifact_is_verified_and_kept(tmp_path, monkeypatch):
    import slimkit.pipeline.compress as pipeline

    seen = []
    real = pipeline.reload_check

    def spy(*args, **kwargs):
        verify = real(*args, **kwargs)
        return lambda path: seen.append(verify(path)) or seen[-1]

    monkeypatch.setattr(pipeline, "reload_check", spy)
    out = tmp_path / "m.slim"
    model, _ = compress(mlp(), [sk.make_config("kmeans", bits=3)], data=batches(), out=out, options=OPTIONS)
    assert seen == [0.0]                     # the reloaded file computed exactly what the model computes
    assert _leftovers(tmp_path) == ["m.slim"]
    x = batches()[0]
    assert torch.equal(sk.load(out, runtime="torch")(x), model(x))


def test_a_writer_that_changes_a_value_fails_and_leaves_no_file(tmp_path, monkeypatch):
    real = Palette.encode

    def lossy(self, data, bits=None, **kw):
        indices, side, params = real(self, data, bits, **kw)
        indices = indices.copy()
        indices.flat[0] = (int(indices.flat[0]) + 1) % side["codebook"].size   # one weight, another centroid
        return indices, side, params

    monkeypatch.setattr(Palette, "encode", lossy)
    out = tmp_path / "m.slim"
    with pytest.raises(SlimError, match="does not compute what the compressed model computes"):
        compress(mlp(), [sk.make_config("kmeans", bits=3)], data=batches(), out=out, options=OPTIONS)
    assert _leftovers(tmp_path) == []        # neither the output nor its temporary file


def test_a_file_that_does_not_load_back_fails_and_keeps_the_old_output(tmp_path, monkeypatch):
    real = Palette.encode

    def broken(self, data, bits=None, **kw):
        indices, side, params = real(self, data, bits, **kw)
        return indices, {"codebook": side["codebook"].astype(np.float64)}, {**params, "dtype": "float32"}

    monkeypatch.setattr(Palette, "encode", broken)
    out = tmp_path / "m.slim"
    out.write_bytes(b"the previous result")
    with pytest.raises(SlimError, match="does not load back"):
        compress(mlp(), [sk.make_config("kmeans", bits=3)], data=batches(), out=out, options=OPTIONS)
    assert out.read_bytes() == b"the previous result"
    assert _leftovers(tmp_path) == ["m.slim"]


def test_a_model_saved_without_its_architecture_is_verified_against_it(tmp_path):
    out = tmp_path / "b.slim"
    compress(Branchy(), [sk.make_config("int8")], data=batches(), out=out, options=OPTIONS)
    assert sk.read_manifest(out).base["kind"] == "user"
    assert out.exists()


def test_meta_copy_takes_no_memory_and_keeps_the_original():
    model = mlp()
    copy = meta_copy(model)
    assert all(t.is_meta for t in copy.state_dict().values())
    assert not any(t.is_meta for t in model.state_dict().values())


def test_compare_tolerates_rounding_only():
    y = torch.ones(4, 3)
    assert compare((y + 1e-7, {"a": y}), (y, {"a": y}), "x") < 1e-6
    with pytest.raises(SlimError, match="does not compute"):
        compare(y + 1e-2, y, "x")
    with pytest.raises(SlimError, match="does not compute"):
        compare(y * float("nan"), y, "x")
    with pytest.raises(SlimError, match="other shapes"):
        compare(y[:2], y, "x")


def test_the_cli_says_so_in_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    from cli_runner import cli

    real = Palette.encode

    def lossy(self, data, bits=None, **kw):
        indices, side, params = real(self, data, bits, **kw)
        indices = indices.copy()
        indices[...] = 0                       # every weight of the layer, one centroid
        return indices, side, params

    monkeypatch.setattr(Palette, "encode", lossy)
    out = tmp_path / "lenet.slim"
    code, _, err = cli(monkeypatch, capsys, "-q", "compress", "builtin:lenet-300-100", "--recipe", "kmeans",
                       "--out", str(out))
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("slimkit: error: ")
    assert "does not compute what the compressed model computes" in err
    assert _leftovers(tmp_path) == []
