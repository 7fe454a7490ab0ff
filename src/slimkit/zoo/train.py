"""Deterministic supervised training on digits (seconds on 2 cores), best epoch chosen on val, on
`slimkit.train`'s loop (Adam, cosine LR per epoch, one shuffle generator for the whole run)."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.train.loop import LoopSettings
from slimkit.train.loop import fit as train_loop
from slimkit.zoo.digits import DigitsData, Split


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `split`."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(split), batch_size):
        correct += int((model(split.x[i:i + batch_size]).argmax(1) == split.y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(split))


def fit(model: nn.Module, data: DigitsData, epochs: int = 60, lr: float = 2e-3, seed: int = 0,
        batch_size: int = 64, weight_decay: float = 1e-4) -> nn.Module:
    """Train with Adam and cross-entropy; return the model with the best validation accuracy.

    Every rank of a torchrun group trains alone (the cached weights are the same everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = data.train.x, data.train.y
    orders = [torch.randperm(len(y), generator=gen) for _ in range(epochs)]

    def batches(epoch: int) -> list:
        return [({"x": x[idx]}, y[idx]) for idx in orders[epoch].split(batch_size)]

    settings = LoopSettings(epochs=epochs, lr=lr, weight_decay=weight_decay, optimizer="adam",
                            schedule="cosine-epoch", seed=None, data_parallel=False)
    train_loop(model, _positional_cross_entropy, batches, settings, lambda m: accuracy(m, data.val))
    return model


def _positional_cross_entropy(model: nn.Module, inputs: dict, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `model(x)`: any classifier taking one tensor (an `nn.Sequential` included)."""
    return nn.functional.cross_entropy(model(inputs["x"]), target)
