"""`freeze`: parameters the distillation keeps as they are (e.g. a student's word embeddings)."""

from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import SlimError
from slimkit.distillation import DistillConfig, distill
from slimkit.distillation.students import pruned_student

BASE = {"alpha": 1.0, "temperature": 1.0, "epochs": 2, "lr": 1e-2, "batch_size": 64, "seed": 0}


def test_frozen_parameters_stay_and_train_again_afterwards(lenet, digits_task):
    student = pruned_student(lenet, widths=[8, 6], criterion="l2", data=digits_task)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    out = distill(lenet, student, digits_task, DistillConfig(**BASE, freeze=["fc1", "fc2.bias"]))
    after = dict(out.named_parameters())
    for name in ("fc1.weight", "fc1.bias", "fc2.bias"):
        assert torch.equal(after[name], before[name]), name
    for name in ("fc2.weight", "fc3.weight", "fc3.bias"):
        assert not torch.equal(after[name], before[name]), name
    assert all(p.requires_grad for p in out.parameters())  # only during distillation


def test_freezing_changes_nothing_else(lenet, digits_task):
    """Without `freeze` the run is the one it always was; with an empty list too."""
    runs = []
    for extra in ({}, {"freeze": []}):
        student = pruned_student(lenet, widths=[8, 6], criterion="l2", data=digits_task)
        runs.append(distill(lenet, student, digits_task, DistillConfig(**BASE, **extra)).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_unknown_names_are_refused_in_one_line_and_nothing_stays_frozen(lenet, digits_task):
    student = pruned_student(lenet, widths=[8, 6], criterion="l2", data=digits_task)
    with pytest.raises(SlimError, match="freeze: the student has no parameter named 'fc'") as info:
        distill(lenet, student, digits_task, DistillConfig(**BASE, freeze=["fc1", "fc"]))
    assert "\n" not in str(info.value)
    assert all(p.requires_grad for p in student.parameters())
