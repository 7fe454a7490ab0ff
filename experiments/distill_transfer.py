"""What one run of the KD-vs-labels experiment trains on: digits batches, some images cut-mixed.

CutMix (Yun et al. 2019) pastes a random square of one training image into another. A labels-only
student can only be told "this much of the area came from each image" (area-weighted one-hot
targets); a distilled student is told what the teacher reads in the pasted image. Both arms get the
same images; the distilled arm's targets come from the teacher (with `alpha: 1` the hard targets
are unused).

>>> import slimkit as sk
>>> task = TrainingView(sk.zoo.entry("lenet-300-100").task(), cutmix=1.0)
>>> inputs, target = task.train_batches(32, seed=0)[0]
>>> inputs["x"].shape, target.shape    # soft targets: one row of class probabilities per image
(torch.Size([32, 64]), torch.Size([32, 10]))
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.task import Batch, Task


def cutmix(images: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random square of a shuffled copy into each image `(n, h, w)`; `targets` `(n, classes)`
    are mixed by the pasted area. One box per image, its area uniform in [0, 1].

    >>> x, y = cutmix(torch.rand(4, 8, 8), torch.eye(10)[:4], torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(y.sum(1), torch.ones(4)))
    True
    """
    n, h, w = images.shape
    perm = torch.randperm(n, generator=gen)
    area = torch.rand(n, generator=gen)
    side_h, side_w = (area.sqrt() * h).round().long(), (area.sqrt() * w).round().long()
    cy, cx = torch.randint(0, h, (n,), generator=gen), torch.randint(0, w, (n,), generator=gen)
    rows = _span(cy, side_h, h)
    cols = _span(cx, side_w, w)
    box = rows[:, :, None] & cols[:, None, :]
    mixed = torch.where(box, images[perm], images)
    pasted = box.float().mean((1, 2))[:, None]
    return mixed, (1 - pasted) * targets + pasted * targets[perm]


def _span(center: torch.Tensor, side: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size) mask of the positions [center - side//2, center + ceil(side/2)) clipped to the image."""
    pos = torch.arange(size)[None]
    lo = (center - side // 2).clamp(0, size)[:, None]
    hi = (center + (side + 1) // 2).clamp(0, size)[:, None]
    return (pos >= lo) & (pos < hi)


class TrainingView(Task):
    """What one run of the experiment trains on: the digits task with a share `cutmix` of its
    training batches cut-mixed (each batch decided by the epoch's seed; targets then are class
    probabilities), and, with `validate=False`, no validation score, so that the training loop keeps
    the final weights instead of the best-validation epoch. Test and validation scores are the task's.
    """

    name = "digits-view"
    score_name = "accuracy"

    def __init__(self, task: Task, cutmix: float = 0.0, validate: bool = True):
        if not 0.0 <= cutmix <= 1.0:
            raise ValueError(f"cutmix share must be in [0, 1], got {cutmix}")
        self.task = task
        self.data = task.data  # type: ignore[attr-defined]
        self.cutmix = cutmix
        if not validate:
            self.validation_score = None  # the loop then keeps the last epoch

    def example_inputs(self, batch_size: int) -> Batch:
        return self.task.example_inputs(batch_size)

    def score(self, model: nn.Module) -> float:
        return self.task.score(model)

    def validation_score(self, model: nn.Module) -> float:  # type: ignore[override]
        return self.task.validation_score(model)  # type: ignore[attr-defined]

    def calibration(self, n: int = 256) -> list[Batch]:
        return self.task.calibration(n)

    def train_batches(self, batch_size: int = 64, seed: int = 0) -> list[tuple[Batch, torch.Tensor]]:
        if not self.cutmix:
            return self.task.train_batches(batch_size, seed)
        gen = torch.Generator().manual_seed(seed)
        x, y = self.data.train.x, self.data.train.y
        side = int(round(x.shape[1] ** 0.5))
        eye = torch.eye(int(y.max()) + 1)
        out = []
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            xb, yb = x[idx], eye[y[idx]]
            if float(torch.rand(1, generator=gen)) < self.cutmix:
                mixed, yb = cutmix(xb.view(len(idx), side, side), yb, gen)
                xb = mixed.reshape(len(idx), -1)
            out.append(({"x": xb}, yb))
        return out
