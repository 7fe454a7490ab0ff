"""Cut-mixed transfer sets for the KD-vs-labels experiment: what is pasted, how targets are mixed."""

from __future__ import annotations

import pytest
import torch

from experiments.distill_transfer import TrainingView, cutmix


def test_cutmix_pastes_a_square_of_another_image_and_mixes_targets_by_its_area():
    images = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 8, 8).clone()  # image i is all i
    targets = torch.eye(10)[:6]
    mixed, soft = cutmix(images, targets, torch.Generator().manual_seed(3))
    assert torch.allclose(soft.sum(1), torch.ones(6))
    changed = 0
    for i in range(6):
        pasted = mixed[i] != i
        if not pasted.any():  # an empty box, or the image drew itself
            assert soft[i, i] == pytest.approx(1.0)
            continue
        changed += 1
        other = mixed[i][pasted].unique()
        assert other.numel() == 1  # one other image pasted
        rows, cols = pasted.nonzero(as_tuple=True)
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)  # a rectangle
        area = float(pasted.float().mean())
        assert soft[i, int(other)] == pytest.approx(area) and soft[i, i] == pytest.approx(1 - area)
    assert changed >= 3


def test_cutmix_task_mixes_the_asked_share_of_batches_deterministically(digits_task):
    task = TrainingView(digits_task, cutmix=0.5)
    a, b = task.train_batches(32, seed=4), task.train_batches(32, seed=4)
    assert all(torch.equal(x["x"], y["x"]) and torch.equal(s, t) for (x, s), (y, t) in zip(a, b, strict=True))
    soft = [bool((t.max(1).values < 1).any()) for _, t in a]
    assert 0 < sum(soft) < len(a)  # some batches mixed, some left as they are
    plain = [t for _, t in a if t.max(1).values.min() == 1]
    assert all(torch.equal(t.sum(1), torch.ones(len(t))) for t in plain)
    assert sum(len(t) for _, t in a) == len(digits_task.data.train)
    model = torch.nn.Linear(64, 10)
    assert task.validation_score(model) == digits_task.validation_score(model)
    assert TrainingView(digits_task, validate=False).validation_score is None  # the loop keeps the last epoch
    assert torch.equal(TrainingView(digits_task).train_batches(32, 4)[0][1], digits_task.train_batches(32, 4)[0][1])
    with pytest.raises(ValueError, match="cutmix share"):
        TrainingView(digits_task, cutmix=1.5)
