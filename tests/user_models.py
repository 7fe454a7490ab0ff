"""Models slimkit has never seen, built and trained here as a user would: a ResNet-style CNN with
BatchNorm and residual adds, an MLP with LayerNorm, and a 1-D conv + GRU sequence model, each
trained in a few seconds on the 8x8 digits, with a DataLoader and an accuracy metric on the test split.

>>> model, loader, accuracy = trained("mlp")
>>> model, result = sk.compress(model, "int8", data=loader, metric=accuracy)
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimkit.zoo.digits import load_digits


class ResidualCNN(nn.Module):
    """conv-BN-ReLU, one residual block (two conv-BN, a skip add), pooling, a linear head."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(4 * width, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image.view(-1, 1, 8, 8))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.head(self.pool(torch.relu(x + y)).flatten(1))


class NormMLP(nn.Module):
    """64 -> 128 (LayerNorm, ReLU) -> 64 (ReLU) -> 10."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.norm = nn.LayerNorm(128)
        self.fc2 = nn.Linear(128, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.norm(self.fc1(pixels))))))


class ConvGRU(nn.Module):
    """The image as a sequence of 8 rows: a 1-D convolution over the rows, a GRU, a linear head."""

    def __init__(self, hidden: int = 48):
        super().__init__()
        self.conv = nn.Conv1d(8, 32, 3, padding=1)
        self.gru = nn.GRU(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        seq = torch.relu(self.conv(rows.view(-1, 8, 8).transpose(1, 2))).transpose(1, 2)   # (batch, 8 steps, 32)
        _, last = self.gru(seq)
        return self.head(last[-1])


ARCHITECTURES = {"cnn": ResidualCNN, "mlp": NormMLP, "gru": ConvGRU}
EPOCHS = {"cnn": 12, "mlp": 20, "gru": 20}


def loader(batch_size: int = 64, shuffle: bool = False) -> DataLoader:
    """The digits training split as (pixels, label) batches: what a user's DataLoader gives."""
    data = load_digits()
    return DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def accuracy(model: nn.Module) -> float:
    """Top-1 accuracy on the digits test split (719 images): the user's own metric."""
    test = load_digits().test
    model.eval()
    return (model(test.x).argmax(1) == test.y).float().mean().item()


@cache
def _trained_state(kind: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = ARCHITECTURES[kind]()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = loader(shuffle=True)
    for _ in range(EPOCHS[kind]):
        model.train()
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained(kind: str) -> nn.Module:
    """A fresh copy of the trained `kind` model ("cnn", "mlp" or "gru"), trained once per session."""
    model = ARCHITECTURES[kind]()
    model.load_state_dict(_trained_state(kind))
    return model.eval()
