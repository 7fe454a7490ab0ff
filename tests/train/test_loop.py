"""The one training loop: deterministic, early stopping, LR schedules, optimizers, hooks, explicit
tensors, checkpoint and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.train.loop import CHECKPOINT, Hooks, LoopSettings, fit, lr_factor
from slimkit.train.supervised import cross_entropy, task_batches
from slimkit.zoo.lenet import LeNet300100


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


def test_lr_hold_then_cosine_matches_the_pruning_schedule():
    """`hold` epochs at the peak, then cosine to zero over the rest (as prune-and-retrain had it)."""
    s = LoopSettings(epochs=4, schedule="cosine", hold=2)
    assert [lr_factor(i, 40, s) for i in (0, 19)] == [1.0, 1.0]
    assert lr_factor(20, 40, s) == 1.0 and lr_factor(30, 40, s) == pytest.approx(0.5)
    assert lr_factor(39, 40, s) == 0.5 * (1 + math.cos(math.pi * 19 / 20))
    with pytest.raises(ValueError, match="hold"):
        LoopSettings(hold=-1)
    with pytest.raises(ValueError, match="cosine-epoch"):
        LoopSettings(schedule="cosine-epoch", warmup=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        LoopSettings(optimizer="sgd")


def test_adam_and_cosine_epoch_equal_the_plain_torch_loop():
    """optimizer=adam + schedule=cosine-epoch is bit for bit the classic hand-written loop."""
    model, loss_fn, batches, validate = _problem()
    reference = _state(model)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3)
    for epoch in range(3):
        for inputs, target in batches(epoch):
            opt.zero_grad()
            loss_fn(plain, inputs, target).backward()
            opt.step()
        sched.step()
    settings = LoopSettings(epochs=3, lr=1e-2, optimizer="adam", schedule="cosine-epoch", seed=None)
    result = fit(model, loss_fn, batches, settings)        # no validation: the last epoch is kept
    assert result.epochs_run == 3 and not torch.equal(reference["0.weight"], model.state_dict()["0.weight"])
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in model.state_dict().items())


def test_step_hooks_run_around_every_step_and_the_hold_defers_best():
    model, loss_fn, batches, _ = _problem()
    calls = []
    hooks = Hooks(before_step=lambda i: calls.append(("before", i)), after_step=lambda i: calls.append(("after", i)))
    scores = iter([0.99, 0.5, 0.6, 0.55])                 # epoch 1 is best but still held
    result = fit(model, loss_fn, batches, LoopSettings(epochs=4, lr=1e-2, hold=1), lambda m: next(scores),
                 hooks=hooks)
    assert calls[:4] == [("before", 0), ("after", 0), ("before", 1), ("after", 1)] and len(calls) == 2 * 4 * 6
    assert result.best_epoch == 3 and result.best_score == 0.6


def test_explicit_tensors_penalty_and_starting_point_compete():
    """`Hooks.params` trains tensors that are not module parameters (a codebook); the model's own
    parameters stay; with `validate_start`, a start no epoch beats is kept."""
    model, _, batches, _ = _problem()
    for p in model.parameters():
        p.requires_grad_(False)
    scale = torch.ones(2, requires_grad=True)
    frozen = _state(model)

    def loss_fn(m, inputs, target):
        return nn.functional.cross_entropy(m(inputs["input"]) * scale, target)

    settings = LoopSettings(epochs=2, lr=1e-1, seed=None, validate_start=True)
    penalties = []
    hooks = Hooks(params=[scale], penalty=lambda: penalties.append(1) or scale.pow(2).sum() * 0.0)
    result = fit(model, loss_fn, batches, settings, lambda m: 1.0 if torch.equal(scale, torch.ones(2)) else 0.5,
                 hooks=hooks)
    assert result.best_epoch == 0 and result.best_score == 1.0 and torch.equal(scale, torch.ones(2))
    assert len(penalties) == 2 * 6 and all(torch.equal(frozen[k], v) for k, v in model.state_dict().items())
    result = fit(model, loss_fn, batches, LoopSettings(epochs=2, lr=1e-1, seed=None), hooks=Hooks(params=[scale]))
    assert not torch.equal(scale, torch.ones(2))
    assert all(torch.equal(frozen[k], v) for k, v in model.state_dict().items())


def test_interrupted_training_leaves_the_best_weights():
    model, loss_fn, batches, _ = _problem()
    scores = iter([0.9, 0.1])
    kept = {}

    def stop(info):
        if info.epoch == 1:
            kept.update(_state(model))
        else:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, loss_fn, batches, LoopSettings(epochs=3, lr=1e-2), lambda m: next(scores), on_epoch=stop)
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())


def test_freeze_norm_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    _, loss_fn, batches, _ = _problem()
    fit(model, loss_fn, batches, LoopSettings(epochs=1, freeze_norm=True))
    assert torch.equal(model[1].running_mean, torch.zeros(8)) and model[1].num_batches_tracked == 0
    fit(model, loss_fn, batches, LoopSettings(epochs=1))
    assert model[1].num_batches_tracked == 6


def test_cosine_epoch_resume_is_bit_identical_and_resume_key_is_checked(tmp_path):
    settings = LoopSettings(epochs=4, lr=1e-2, optimizer="adam", schedule="cosine-epoch", seed=3)
    model, loss_fn, batches, validate = _problem()
    fit(model, loss_fn, batches, settings, validate)
    reference = _state(model)

    def stop_after_two(info):
        if info.epoch == 2:
            raise KeyboardInterrupt

    model, loss_fn, batches, validate = _problem()
    with pytest.raises(KeyboardInterrupt):
        fit(model, loss_fn, batches, settings, validate, on_epoch=stop_after_two, checkpoint=tmp_path,
            hooks=Hooks(resume_key={"bits": 4}))
    with pytest.raises(SlimError, match="other bits"):
        fit(model, loss_fn, batches, settings, validate, checkpoint=tmp_path, hooks=Hooks(resume_key={"bits": 3}))
    model, loss_fn, batches, validate = _problem(seed=5)
    fit(model, loss_fn, batches, settings, validate, checkpoint=tmp_path, hooks=Hooks(resume_key={"bits": 4}))
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_task_batches_and_cross_entropy(digits_task):
    batches = task_batches(digits_task, 32, seed=0, what="fine-tuning")
    assert batches(0) is batches(0) and len(batches(0)) == -(-len(digits_task.data.train) // 32)
    assert not torch.equal(batches(1)[0][1], batches(0)[0][1])           # a new order every epoch
    torch.manual_seed(0)
    model = LeNet300100()
    inputs, target = batches(0)[0]
    loss = cross_entropy(digits_task)(model, inputs, target)
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(model(inputs["x"]), target).item())
    with pytest.raises(SlimError, match="qat needs a task with labelled training data"):
        task_batches(None, 32, 0, "qat")
