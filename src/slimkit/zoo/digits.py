"""scikit-learn's bundled 8x8 digits, split 50/10/40 (train/val/test), stratified, fixed seed.

1,797 images; the 40% test split has 719 images, so one image is 0.14 pt of accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SPLIT_SEED = 20240607


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32, (n, 64) in [0, 1]
    y: torch.Tensor  # int64, (n,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DigitsData:
    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, int, int] = (1, 8, 8)


@lru_cache(maxsize=1)
def load_digits() -> DigitsData:
    """The deterministic split. Pixels are scaled to [0, 1]; reshape to `image_shape` for CNNs."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, rest = train_test_split(idx, train_size=0.5, stratify=y, random_state=SPLIT_SEED)
    val_idx, test_idx = train_test_split(rest, train_size=0.2, stratify=y[rest], random_state=SPLIT_SEED)

    def split(ix: np.ndarray) -> Split:
        ix = np.sort(ix)
        return Split(torch.from_numpy(x[ix]), torch.from_numpy(y[ix]))

    return DigitsData(split(train_idx), split(val_idx), split(test_idx))
