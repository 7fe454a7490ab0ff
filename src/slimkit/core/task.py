"""A task knows how to feed a model, score it, and supply calibration and training data.

`DigitsTask` (classification accuracy) and `EmbeddingTask` (cosine fidelity to the original
encoder) implement it; compression methods only see `Task.calibration()` batches and
`Task.forward()`, so they work on any model a task can drive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Task(ABC):
    """What a model is for: its inputs, its score, its data."""

    name: str = "task"
    score_name: str = "score"

    @abstractmethod
    def example_inputs(self, batch_size: int) -> Batch:
        """Inputs for a forward pass (used for latency and for tracing)."""

    @abstractmethod
    def score(self, model: nn.Module) -> float:
        """The quality score in [0, 1]: accuracy, or fidelity to the original model."""

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """The score under `score_name` and whatever else the same evaluation measured, by name (a
        language model's perplexity and KL to the original). `evaluate` reports them all."""
        return {self.score_name: self.score(model)}

    @abstractmethod
    def calibration(self, n: int = 256) -> list[Batch]:
        """Unlabelled input batches for calibration (never the test split)."""

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """Run the model on a batch the way this task does."""
        return model(**batch)

    def train_batches(self, batch_size: int = 64, seed: int = 0) -> list[tuple[Batch, torch.Tensor]]:
        """(inputs, target) batches for fine-tuning; tasks without labels may raise."""
        raise NotImplementedError(f"{self.name} has no labelled training data")


def has_labels(task: Task | None) -> bool:
    """Whether `task` supplies labelled training batches: it overrides `Task.train_batches` and does
    not say otherwise (a task made from unlabelled data sets `labelled = False`)."""
    return (task is not None and type(task).train_batches is not Task.train_batches
            and bool(getattr(task, "labelled", True)))
