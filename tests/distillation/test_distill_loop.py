"""The training loop: deterministic, early stopping, LR schedule, checkpoint and resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from slimkit.train.loop import CHECKPOINT, LoopSettings, fit, lr_factor
from slimkit.core.errors import SlimError


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(96, 6, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    def batches(epoch: int):
        order = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
        return [({"input": x[i]}, y[i]) for i in order.split(16)]

    def loss_fn(student, inputs, target):
        return nn.functional.cross_entropy(student(inputs["input"]), target)

    def validate(student):
        with torch.no_grad():
            return float((student(x).argmax(1) == y).float().mean())

    return model, loss_fn, batches, validate


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights():
    runs = []
    for _ in range(2):
        model, loss_fn, batches, validate = _problem()
        fit(model, loss_fn, batches, LoopSettings(epochs=4, lr=1e-2), validate)
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_keeps_best_validation_epoch_and_stops_early():
    model, loss_fn, batches, _ = _problem()
    scores = iter([0.5, 0.9, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    seen = []
    result = fit(model, loss_fn, batches, LoopSettings(epochs=8, lr=1e-2, patience=2),
                 lambda m: next(scores), on_epoch=seen.append)
    assert result.best_epoch == 2 and result.best_score == 0.9
    assert result.epochs_run == 4 and len(seen) == 4 and seen[-1].stopped
    assert all(info.loss > 0 for info in seen)


def test_lr_schedule_shapes():
    s = LoopSettings(epochs=1, schedule="cosine", warmup=0.1)
    assert lr_factor(0, 100, s) == pytest.approx(0.1)
    assert lr_factor(10, 100, s) == pytest.approx(1.0)
    assert lr_factor(99, 100, s) < 0.01
    assert lr_factor(50, 100, LoopSettings(schedule="linear")) == pytest.approx(0.5)
    assert lr_factor(70, 100, LoopSettings(schedule="constant")) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        LoopSettings(schedule="steps")


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    settings = LoopSettings(epochs=5, lr=1e-2, seed=7)
    model, loss_fn, batches, validate = _problem()
    fit(model, loss_fn, batches, settings, validate)
    reference = _state(model)

    class Interrupt(Exception):
        pass

    def stop_after_two(info):
        if info.epoch == 2:
            raise Interrupt

    model, loss_fn, batches, validate = _problem()
    with pytest.raises(Interrupt):
        fit(model, loss_fn, batches, settings, validate, on_epoch=stop_after_two, checkpoint=tmp_path)
    path = tmp_path / CHECKPOINT
    assert path.is_file()
    head = path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")]
    assert json.loads(json.loads(head)["__metadata__"]["slimkit_checkpoint"])["state"]["epoch"] == 2
    model, loss_fn, batches, validate = _problem(seed=99)  # different initial weights: all restored
    result = fit(model, loss_fn, batches, settings, validate, checkpoint=tmp_path)
    assert result.epochs_run == 5 and len(result.history) == 5
    assert all(torch.equal(reference[k], model.state_dict()[k]) for k in reference)


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    model, loss_fn, batches, validate = _problem()
    fit(model, loss_fn, batches, LoopSettings(epochs=1, lr=1e-2), validate, checkpoint=tmp_path)
    with pytest.raises(SlimError, match="other training settings"):
        fit(model, loss_fn, batches, LoopSettings(epochs=2, lr=5e-3), validate, checkpoint=tmp_path)


def test_diverging_loss_is_reported():
    model, _, batches, _ = _problem()
    with pytest.raises(SlimError, match="lower the learning rate"):
        fit(model, lambda m, i, t: m(i["input"]).sum() * float("inf"), batches, LoopSettings(epochs=1))


def test_time_limit_stops_between_epochs():
    model, loss_fn, batches, validate = _problem()
    result = fit(model, loss_fn, batches, LoopSettings(epochs=50, lr=1e-2, time_limit=1e-9), validate)
    assert result.epochs_run == 1
    with pytest.raises(ValueError, match="time_limit"):
        LoopSettings(time_limit=0)
