"""The KD-vs-labels protocol on a tiny budget: both arms start from the same weights, each arm
chooses from its own grid on validation, and the report carries the paired statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.distill_kd_vs_labels import kd_vs_labels, student_maker


def test_a_pruned_start_is_the_same_for_every_seed_and_a_random_one_is_not(lenet_trained, digits_task):
    pruned = student_maker(lenet_trained, digits_task, (8, 6), "l2")
    a, b = pruned(0), pruned(1)
    assert a is not b and torch.equal(a.fc1.weight, b.fc1.weight) and a.fc1.out_features == 8
    rows = [i for i in range(300) if any(torch.equal(lenet_trained.fc1.weight[i], w) for w in a.fc1.weight)]
    assert len(rows) == 8  # the teacher's units, not redrawn
    random = student_maker(lenet_trained, digits_task, (8, 6), "random")
    assert not torch.equal(random(0).fc1.weight, random(1).fc1.weight)
    with pytest.raises(ValueError, match="unknown student init"):
        student_maker(lenet_trained, digits_task, (8, 6), "apoz")


def test_kd_vs_labels_reports_paired_statistics_from_validation_choices():
    common = {"epochs": 1, "batch_size": 128, "weight_decay": 0.0}
    grid = ({"alpha": 0.0, "lr": 1e-2}, {"alpha": 0.0, "lr": 3e-3, "mixup": 0.4})
    result = kd_vs_labels(seeds=[0, 1], common=common, init="l2", labels_grid=grid,
                          kd_grid=({"alpha": 1.0, "temperature": 2.0, "lr": 1e-2},))
    labels, kd = result["labels_only"], result["distilled"]
    assert labels["options"] == grid[int(np.argmax(labels["grid_val"]))]  # chosen on validation
    assert len(kd["test"]) == 2 and result["init"] == "l2" and result["student_params"] == 644
    diff = [k - v for k, v in zip(kd["test"], labels["test"], strict=True)]
    assert result["mean_difference"] == pytest.approx(sum(diff) / 2)
    assert "share of the teacher-student gap closed" in result["table"]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        kd_vs_labels(seeds=[0])


def test_parallel_workers_give_the_same_runs_and_grids_may_cut_mix_the_training_images():
    common = {"epochs": 1, "batch_size": 128, "weight_decay": 0.0, "epoch": "last"}
    grid = ({"alpha": 0.0, "lr": 1e-2}, {"alpha": 0.0, "lr": 1e-2, "cutmix": 1.0})
    kd = ({"alpha": 1.0, "temperature": 1.0, "lr": 1e-2, "cutmix": 1.0},)
    one = kd_vs_labels(seeds=[0, 1], common=common, labels_grid=grid, kd_grid=kd)
    two = kd_vs_labels(seeds=[0, 1], common=common, labels_grid=grid, kd_grid=kd, workers=2)
    assert one["labels_only"]["grid_test"] == two["labels_only"]["grid_test"]
    assert one["distilled"]["test"] == two["distilled"]["test"]
    plain, mixed = one["labels_only"]["grid_test"]
    assert plain != mixed  # the cut-mixed images changed what was learnt
    assert "'cutmix': 1.0" in one["table"]
    with pytest.raises(ValueError, match="epoch: 'first'"):
        kd_vs_labels(seeds=[0, 1], common={**common, "epoch": "first"}, labels_grid=grid[:1], kd_grid=kd)
