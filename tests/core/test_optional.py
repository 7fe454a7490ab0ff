"""A missing extra (`slimkit[hf]`, `[onnx]`, `[search]`, `[plots]`) is a one-line error naming it,
raised where the feature starts, before any work."""

from __future__ import annotations

import importlib.util

import pytest

import slimkit as sk
from slimkit.core import optional
from slimkit.core.errors import SlimError
from slimkit.export.onnx import export


@pytest.fixture()
def missing(monkeypatch):
    """Make the named top-level modules look uninstalled."""
    gone: set[str] = set()
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in gone else real(name, *args, **kwargs)

    monkeypatch.setattr(optional.importlib.util, "find_spec", find_spec)
    return gone


def test_require_names_the_extra(missing):
    optional.require("torch", "core")          # installed: nothing happens
    missing.add("optuna")
    message = r"^search needs the optional package 'optuna': pip install 'slimkit\[search\]'$"
    with pytest.raises(SlimError, match=message):
        optional.require("optuna", "search", "search")


def test_search_without_optuna(missing, tmp_path):
    missing.add("optuna")
    with pytest.raises(SlimError, match=r"slimkit\[search\]"):
        sk.search("builtin:lenet-300-100", max_drop=1.0, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_onnx_export_without_onnxruntime(missing, lenet, tmp_path):
    missing.add("onnxruntime")
    with pytest.raises(SlimError, match=r"ONNX export needs the optional package 'onnxruntime'.*slimkit\[onnx\]"):
        export(lenet, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_plots_without_matplotlib(missing):
    missing.add("matplotlib")
    with pytest.raises(SlimError, match=r"slimkit\[plots\]"):
        optional.pyplot()


def test_hugging_face_without_transformers(missing):
    from slimkit.zoo.hf import transformers_offline

    missing.add("transformers")
    with pytest.raises(SlimError, match=r"loading a Hugging Face model needs the optional package 'transformers'"):
        transformers_offline()
