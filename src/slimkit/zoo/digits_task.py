"""Classification on the digits split: accuracy on the 720-image test split."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.task import Batch, Task
from slimkit.zoo.digits import load_digits
from slimkit.zoo.train import accuracy


class DigitsTask(Task):
    """Inputs are `{"x": (n, 64) float}`; the score is top-1 test accuracy."""

    name = "digits"
    score_name = "accuracy"

    def __init__(self):

        self.data = load_digits()

    def example_inputs(self, batch_size: int) -> Batch:
        x = self.data.test.x
        reps = -(-batch_size // len(x))
        return {"x": x.repeat(reps, 1)[:batch_size].clone()}

    @torch.no_grad()
    def score(self, model: nn.Module) -> float:

        return accuracy(model, self.data.test)

    def validation_score(self, model: nn.Module) -> float:
        """Accuracy on the validation split: choose operating points with this, never with test."""

        return accuracy(model, self.data.val)

    def calibration(self, n: int = 256) -> list[Batch]:
        x = self.data.train.x[:n]
        return [{"x": chunk} for chunk in x.split(64)]

    def train_batches(self, batch_size: int = 64, seed: int = 0) -> list[tuple[Batch, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.data.train), generator=gen)
        x, y = self.data.train.x, self.data.train.y
        return [({"x": x[idx]}, y[idx]) for idx in order.split(batch_size)]
