"""Per-layer sensitivity table."""

from __future__ import annotations

import importlib

from torch import nn

from slimkit.quantization.api import WeightOnlyConfig
from slimkit.quantization.sensitivity import sensitivity


def test_sensitivity_one_row_per_layer_and_leaves_model_alone(lenet, digits_task):
    rows = sensitivity(lenet, WeightOnlyConfig(bits=2, granularity="channel"), digits_task)
    assert sorted(r["module"] for r in rows) == ["fc1", "fc2", "fc3"]
    deltas = [r["delta"] for r in rows]
    assert deltas == sorted(deltas) and deltas[0] < 0        # most harmful first; 2 bits hurts
    assert all(type(getattr(lenet, n)) is nn.Linear for n in ("fc1", "fc2", "fc3"))


def test_sensitivity_reports_layers_a_config_cannot_fit(lenet, digits_task, monkeypatch):
    sens = importlib.import_module("slimkit.quantization.sensitivity")   # the module (the package exports the function)
    rows = sensitivity(lenet, WeightOnlyConfig(bits=4, group_size=32), digits_task)
    assert all(r["delta"] is not None for r in rows)             # fc2's 300 inputs: groups of 30 instead
    real = sens.apply_

    def refuse_fc2(model, config, task):
        if config.targets == ["fc2"]:
            raise ValueError("fc2: this layer cannot take the option")
        return real(model, config, task)

    monkeypatch.setattr(sens, "apply_", refuse_fc2)
    by = {r["module"]: r for r in sensitivity(lenet, WeightOnlyConfig(bits=4, group_size=32), digits_task)}
    assert by["fc1"]["delta"] is not None
    assert by["fc2"]["delta"] is None and "cannot take" in by["fc2"]["error"]


def test_sensitivity_covers_convolutions(lenet5_trained, digits_task):
    rows = sensitivity(lenet5_trained, WeightOnlyConfig(bits=2, granularity="channel"), digits_task)
    assert sorted(r["module"] for r in rows) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert all(r["delta"] is not None for r in rows)
