"""FitNets hints between named modules of any student (`hint_layers`), e.g. a pruned MLP."""

from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import SlimError
from slimkit.distillation import DistillConfig, distill
from slimkit.distillation.api import build_objective
from slimkit.distillation.students import pruned_student


def test_named_hints_compare_same_named_modules_through_a_learned_projection(lenet, digits_task):
    student = pruned_student(lenet, widths=[8, 6], criterion="l2", data=digits_task)
    inputs, target = digits_task.train_batches(32, seed=0)[0]
    plain = build_objective(lenet, student, DistillConfig(alpha=1.0, temperature=1.0))
    hinted = build_objective(lenet, student, DistillConfig(alpha=1.0, temperature=1.0, hidden_weight=1.0,
                                                           hint_layers=["fc2"]))
    assert hinted.hints == [("fc2", "fc2")] and not plain.hints
    hinted.prepare(student, inputs)
    (proj,) = hinted.projections.values()
    assert (proj.in_features, proj.out_features) == (6, 100)  # student width -> teacher width
    with torch.no_grad():
        assert hinted(student, inputs, target) > plain(student, inputs, target)  # the hint term is added


def _linear_fit_error(student, teacher, x: torch.Tensor) -> float:
    """Mean squared error of the best linear map from the student's fc2 outputs to the teacher's."""
    with torch.no_grad():
        s = torch.cat([student.fc2(torch.relu(student.fc1(x))), torch.ones(len(x), 1)], 1)
        t = teacher.fc2(torch.relu(teacher.fc1(x)))
        coef = torch.linalg.lstsq(s, t).solution
        return float((s @ coef - t).pow(2).mean())


def test_training_with_hints_makes_the_students_features_predict_the_teachers(lenet, digits_task):
    base = {"alpha": 1.0, "temperature": 1.0, "epochs": 10, "lr": 1e-2, "batch_size": 64, "seed": 0}
    x = digits_task.data.train.x
    errors = {}
    for weight in (0.0, 0.3):
        student = pruned_student(lenet, widths=[8, 6], criterion="l2", data=digits_task)
        hints = {"hidden_weight": weight, "hint_layers": ["fc2"]} if weight else {}
        out = distill(lenet, student, digits_task, DistillConfig(**base, **hints))
        assert out is student
        errors[weight] = _linear_fit_error(student, lenet, x)
    assert errors[0.3] < 0.9 * errors[0.0], errors


def test_bad_hints_are_refused_in_one_line(lenet, digits_task):
    student = pruned_student(lenet, widths=[8, 6], criterion="l2", data=digits_task)
    batch, _ = digits_task.train_batches(32, seed=0)[0]
    with pytest.raises(SlimError, match="hidden_weight > 0"):
        build_objective(lenet, student, DistillConfig(hint_layers=["fc2"]))
    bad = build_objective(lenet, student, DistillConfig(hidden_weight=1.0, hint_layers=["fc9"]))
    with pytest.raises(SlimError, match="no module named 'fc9'"):
        bad.prepare(student, batch)
    with pytest.raises(SlimError, match="keep/every"):
        build_objective(lenet, student, DistillConfig(hidden_weight=1.0))
