"""ONNX export of compressed models, checked against ONNX Runtime."""

from __future__ import annotations

import pytest

import slimkit as sk
from slimkit.export.onnx import export


@pytest.mark.parametrize("config", [
    lambda: sk.MagnitudePruningConfig(sparsity=0.8, scope="global", epochs=0),
    lambda: sk.make_config("int8"),
    lambda: sk.make_config("kmeans", bits=4, finetune_epochs=0),
    lambda: sk.make_config("hashed", ratio=0.25, finetune_epochs=1),
    lambda: sk.make_config("rtn", bits=4, granularity="channel"),
    lambda: sk.make_config("lowrank", rank=8, targets=["fc1", "fc2"]),
], ids=["magnitude", "int8", "kmeans", "hashed", "rtn4", "lowrank"])
def test_compressed_lenet_exports_with_parity(config, lenet, digits_task, tmp_path):
    model = sk.apply_(lenet, config(), digits_task)
    path = tmp_path / "m.slim"
    sk.save(model, path)
    report = export(sk.load(path), tmp_path / "m.onnx", digits_task)
    assert report["bytes"] == (tmp_path / "m.onnx").stat().st_size > 0
    assert report["cosine"] >= 0.999, report


def test_structurally_pruned_lenet5_exports_smaller(lenet5_trained, digits_task, tmp_path):
    import copy

    model = copy.deepcopy(lenet5_trained)
    model.__dict__["slimkit_base"] = dict(lenet5_trained.__dict__["slimkit_base"])
    model.__dict__.pop("slimkit_edits", None)
    full = export(model, tmp_path / "full.onnx", digits_task)
    model = sk.apply_(model, sk.make_config("weight-norm", ratio=0.5, max_drop=100, ignore=["conv1"]), digits_task)
    small = export(model, tmp_path / "small.onnx", digits_task)
    assert small["cosine"] >= 0.999 and small["bytes"] < 0.6 * full["bytes"]


def test_export_cli_refuses_existing_output(tmp_path, monkeypatch, capsys):
    import sys

    from slimkit.cli.main import run

    out = tmp_path / "x.onnx"
    out.write_bytes(b"keep")
    monkeypatch.setattr(sys, "argv", ["slimkit", "export", "builtin:lenet-300-100", "--onnx", str(out)])
    with pytest.raises(SystemExit) as exc:
        run()
    assert exc.value.code == 2 and out.read_bytes() == b"keep"
    assert "already exists" in capsys.readouterr().err


def test_export_writes_no_temporary_file_a_symlink_could_redirect(lenet, digits_task, tmp_path):
    """The graph is built in memory (issue 22): a symlink planted where the old fixed-name temporary
    file went is never written through, and only the output appears."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / ".m.onnx.export").symlink_to(victim)
    export(lenet, tmp_path / "m.onnx", digits_task, integer=False)
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.onnx.export", "m.onnx", "victim"]
    with pytest.raises(sk.SlimError, match="already exists"):
        export(lenet, tmp_path / "m.onnx", digits_task, overwrite=False)
