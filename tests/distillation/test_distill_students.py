"""Students derived from the teacher: shrunken MLPs, kept transformer layers; save and load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.distillation.students import keep_layers, mlp_params, param_count, shrink_mlp


def test_shrink_mlp_keeps_inputs_outputs_and_base(lenet):
    student = shrink_mlp(lenet, (7, 7), seed=3)
    assert (student.fc1.out_features, student.fc2.out_features, student.fc3.out_features) == (7, 7, 10)
    assert param_count(student) == mlp_params([64, 7, 7, 10]) == 591
    assert student.__dict__["slimkit_base"] == lenet.__dict__["slimkit_base"]
    assert student.__dict__["slimkit_base"] is not lenet.__dict__["slimkit_base"]
    assert lenet.fc1.out_features == 300 and not lenet.__dict__.get("slimkit_edits")
    again = shrink_mlp(lenet, (7, 7), seed=3)
    assert torch.equal(again.fc1.weight, student.fc1.weight)
    assert not torch.equal(shrink_mlp(lenet, (7, 7), seed=4).fc1.weight, student.fc1.weight)


def test_teacher_init_keeps_the_strongest_units(lenet, digits_task):
    student = shrink_mlp(lenet, (150, 50), init="teacher")
    w = lenet.fc1.weight
    rows = [i for i in range(300) if any(torch.equal(w[i], r) for r in student.fc1.weight)]
    assert len(rows) == 150
    assert digits_task.score(student) > 0.5  # a warm start, far above chance


def test_student_saves_and_loads_without_new_format(lenet, tmp_path, digits_task):
    student = shrink_mlp(lenet, (16, 8))
    path = tmp_path / "student.slim"
    sk.save(student, path)
    loaded = sk.load(path, runtime="torch")
    x = digits_task.example_inputs(32)["x"]
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    assert path.stat().st_size < 10_000  # 1,250 fp32 parameters + the manifest


@pytest.mark.parametrize("hidden, message", [((8,), "2 hidden widths"), ((8, 0), ">= 1")])
def test_bad_widths_are_refused(lenet, hidden, message):
    with pytest.raises(sk.SlimError, match=message):
        shrink_mlp(lenet, hidden)


def test_non_mlp_is_refused():
    with pytest.raises(sk.SlimError, match="not an MLP"):
        shrink_mlp(nn.Sequential(nn.Conv2d(1, 2, 3)), (4,))


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(6))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def test_keep_layers_keeps_teacher_weights_and_records_the_edit():
    teacher = _Stack()
    student = keep_layers(teacher, every=2)
    assert len(student.layers) == 3 and len(teacher.layers) == 6
    assert torch.equal(student.layers[0].weight, teacher.layers[1].weight)
    edit = {"op": "keep_layers", "module": "layers", "keep": [1, 3, 5]}
    assert student.__dict__["slimkit_edits"][-1] == edit
    from slimkit.surgery import replay_edits

    rebuilt = _Stack()
    replay_edits(rebuilt, student.__dict__["slimkit_edits"])
    assert len(rebuilt.layers) == 3
    with pytest.raises(sk.SlimError, match="distinct indices"):
        keep_layers(teacher, [0, 9])
    with pytest.raises(sk.SlimError, match="exactly one"):
        keep_layers(teacher)
