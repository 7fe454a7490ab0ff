"""Deterministic supervised training on digits (seconds on 2 cores), best epoch chosen on val."""

from __future__ import annotations

import copy

import torch
from torch import nn

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
    """Train with Adam and cross-entropy; return the model with the best validation accuracy."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    best, best_acc = copy.deepcopy(model.state_dict()), -1.0
    x, y = data.train.x, data.train.y
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        acc = accuracy(model, data.val)
        if acc > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), acc
    model.load_state_dict(best)
    model.eval()
    return model
