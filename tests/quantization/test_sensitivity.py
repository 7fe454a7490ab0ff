"""Per-layer sensitivity table."""

from __future__ import annotations

from torch import nn

from slimkit.quantization.api import WeightOnlyConfig
from slimkit.quantization.sensitivity import sensitivity


def test_sensitivity_one_row_per_layer_and_leaves_model_alone(lenet, digits_task):
    rows = sensitivity(lenet, WeightOnlyConfig(bits=2, granularity="channel"), digits_task)
    assert sorted(r["module"] for r in rows) == ["fc1", "fc2", "fc3"]
    deltas = [r["delta"] for r in rows]
    assert deltas == sorted(deltas) and deltas[0] < 0        # most harmful first; 2 bits hurts
    assert all(type(getattr(lenet, n)) is nn.Linear for n in ("fc1", "fc2", "fc3"))


def test_sensitivity_reports_layers_a_config_cannot_fit(lenet, digits_task):
    rows = sensitivity(lenet, WeightOnlyConfig(bits=4, group_size=32), digits_task)
    by = {r["module"]: r for r in rows}
    assert by["fc1"]["delta"] is not None                        # 64 inputs: groups of 32 fit
    assert by["fc2"]["delta"] is None and "group_size=32" in by["fc2"]["error"]


def test_sensitivity_covers_convolutions(lenet5_trained, digits_task):
    rows = sensitivity(lenet5_trained, WeightOnlyConfig(bits=2, granularity="channel"), digits_task)
    assert sorted(r["module"] for r in rows) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert all(r["delta"] is not None for r in rows)
