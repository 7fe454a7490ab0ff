"""Every registered method: applies to lenet-300-100, saves, loads back to identical outputs,
writes a file no larger than the fp32 baseline, and reports a score."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.pipeline.recipes import Recipe, run_recipe

METHODS = sorted(sk.methods())


def test_methods_registered_have_families():
    for name, cls in sk.methods().items():
        assert cls.method == name
        assert isinstance(cls.family, sk.Family)


@pytest.mark.parametrize("method", METHODS)
def test_method_conformance(method, lenet, digits_task, tmp_path):
    config = sk.methods()[method].example()
    # stages that need the uncompressed model (recovery distillation) run as recipes run them
    recipe = Recipe(name=method, description="", stages=[config])
    model = run_recipe(lenet, recipe, digits_task)
    path = tmp_path / f"{method}.slim"
    size = sk.save(model, path)
    loaded = sk.load(path, runtime="torch")
    x = digits_task.example_inputs(64)["x"]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x)), "loaded model differs from the saved one"
    m = sk.evaluate(loaded, digits_task, path=path, timing=False)
    assert size == path.stat().st_size == m.bytes
    assert m.bytes <= m.baseline_bytes, f"{method} file {m.bytes} B > fp32 {m.baseline_bytes} B"
    assert m.score is not None and 0.0 <= m.score <= 1.0
