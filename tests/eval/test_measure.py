from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk
from slimkit.core.latency import interleaved, median_ms
from slimkit.eval.layers import layer_table
from slimkit.eval.measure import count_params, fp32_safetensors_bytes


def test_fp32_bytes_equals_a_real_safetensors_file(lenet5_trained, tmp_path):
    state = {k: v.float() if v.is_floating_point() else v for k, v in lenet5_trained.state_dict().items()}
    save_file(state, str(tmp_path / "ref.safetensors"))
    assert fp32_safetensors_bytes(state) == (tmp_path / "ref.safetensors").stat().st_size


def test_evaluate_reports_file_truth(lenet, digits_task, tmp_path):
    path = tmp_path / "m.slim"
    sk.save(lenet, path)
    m = sk.evaluate(sk.load(path), digits_task, path=path)
    assert m.bytes == path.stat().st_size
    assert m.score >= 0.97 and m.score_name == "accuracy"
    assert m.params == 50610 == m.nonzeros
    assert set(m.latency_ms) == {"batch1", "batch32"} and all(v > 0 for v in m.latency_ms.values())
    assert 0.99 < m.ratio < 1.01  # same fp32 weights plus a small manifest: no compression claimed


def test_nonzeros_count_zeros(lenet):
    with torch.no_grad():
        lenet.fc1.weight[:10] = 0
    params, nonzeros = count_params(lenet)
    assert params - nonzeros == 10 * 64


def test_layer_table_accounts_every_stored_byte(lenet):
    rows = layer_table(lenet)
    assert [r["name"] for r in rows] == ["fc1", "fc2", "fc3"]
    assert rows[0]["bytes"] == (300 * 64 + 300) * 4 and rows[0]["encoding"] == "raw float32"


def test_latency_helpers_return_positive_medians():
    x = torch.randn(64, 64)
    assert median_ms(lambda: x @ x, repeats=3, warmup=1) > 0
    out = interleaved({"a": lambda: x @ x, "b": lambda: x + x}, rounds=2, repeats=2, warmup=1)
    assert set(out) == {"a", "b"} and all(v > 0 for v in out.values())


def test_interleaved_settle_pauses_before_each_block_and_drops_its_first_call(monkeypatch):
    import slimkit.core.latency as latency

    calls = {"a": 0, "b": 0}
    order: list[str] = []
    sleeps: list[float] = []
    monkeypatch.setattr(latency.time, "sleep", lambda s: (sleeps.append(s), order.append("sleep")))

    def make(k):
        def fn():
            calls[k] += 1
            order.append(k)
        return fn

    out = interleaved({"a": make("a"), "b": make("b")}, rounds=3, repeats=4, warmup=1, settle_s=0.01)
    assert calls == {"a": 1 + 3 * (1 + 4), "b": 1 + 3 * (1 + 4)}  # warm-up, then per round 1 untimed + 4
    assert sleeps == [0.01] * 6
    assert order[2:9] == ["sleep", "a", "a", "a", "a", "a", "sleep"]
    assert set(out) == {"a", "b"}


def test_digits_task_batches(digits_task):
    assert digits_task.example_inputs(1)["x"].shape == (1, 64)
    assert digits_task.example_inputs(1000)["x"].shape == (1000, 64)
    batches = digits_task.train_batches(batch_size=100)
    assert sum(len(y) for _, y in batches) == 898
    with pytest.raises(NotImplementedError):
        from slimkit.core.task import Task

        Task.train_batches(digits_task)
