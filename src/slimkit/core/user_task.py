"""Data and a metric in the form users already have them, made into a `Task`: the one adapter
every entry point (`apply_` and the family verbs, `run_recipe`, `distill`, `evaluate`, `search`,
`compress`) calls on its `data=` / `metric=` arguments.

- `data` is a `Task` (used as it is), a torch `DataLoader`, or any iterable of batches, each a
  tensor (the model's first input), an `(inputs, target)` pair, or a dict of keyword inputs.
  A single tensor, dict or `(inputs, target)` tuple is one batch.
- `metric` is a callable `metric(model) -> float`, higher is better (e.g. accuracy on your test set).

From these `task_from` builds the task: calibration batches and labelled training batches (when the
batches carry integer class targets) from 80% of the data, and a validation split of the other 20%,
held back for the guards (structured pruning's `max_drop`, best-epoch choice, `compress`'s budget).
The validation score is accuracy on that split when the data has class labels, else fidelity to
the model the task was made from: top-1 agreement of its outputs for 2-D outputs (classifiers),
mean cosine of its outputs otherwise. The task's `score` is the metric when given, else that same
validation score.

>>> loader = DataLoader(TensorDataset(x, y), batch_size=64)
>>> task = task_from(loader, metric=lambda m: my_accuracy(m, x_test, y_test), model=model)
>>> task.score(model), task.validation_score(model), len(task.calibration(128))
(0.97, 0.983, 2)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.provenance import task_for
from slimkit.core.task import Batch, Task
from slimkit.core.user_batches import Pair, output_tensor, read_batches, rows_of

Metric = Callable[[nn.Module], float]
VAL_FRACTION = 0.2
CALIB_CHUNK = 64
log = logging.getLogger("slimkit")


def task_from(data: object = None, metric: Metric | None = None, model: nn.Module | None = None,
              seed: int = 0) -> Task | None:
    """The task for `data` and `metric` (see the module doc); None when both are None.

    `model` is the model the batches are for: a tensor batch becomes its forward's first
    parameter, and without a metric the validation score is fidelity to it as it is now.
    """
    if metric is not None and not callable(metric):
        raise SlimError(f"metric= must be a callable metric(model) -> float (higher is better), "
                        f"got a {type(metric).__name__}")
    if is_task(data):
        return data if metric is None else MetricTask(data, metric)  # type: ignore[arg-type]
    if data is None:
        if metric is None:
            return None
        found = task_for(model) if model is not None else None
        if found is None:
            raise SlimError("metric= needs data= too: batches of your inputs (a DataLoader or a list of "
                            "batches) to calibrate with, time and trace the model, and check it")
        return MetricTask(found, metric)
    if model is None:
        raise SlimError("data= needs the model it is for")
    return UserTask(read_batches(data, model), metric, model, seed)


def is_task(data: object) -> bool:
    """A `Task`, or an object written to its interface without subclassing it (not iterable, with
    `example_inputs` and `forward`), as tasks were passed before `data=` took batches."""
    if isinstance(data, Task):
        return True
    return (not isinstance(data, Iterable) and callable(getattr(data, "example_inputs", None))
            and callable(getattr(data, "forward", None)))


class MetricTask(Task):
    """A task whose score is the user's metric; everything else comes from `base`."""

    def __init__(self, base: Task, metric: Metric):
        self.base, self.metric = base, metric
        self.name = base.name
        self.score_name = metric_name(metric)

    def __getattr__(self, name: str) -> Any:   # calib_sentences, encode, data, ... of the base task
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def example_inputs(self, batch_size: int) -> Batch:
        return self.base.example_inputs(batch_size)

    def score(self, model: nn.Module) -> float:
        return call_metric(self.metric, model)

    def validation_score(self, model: nn.Module) -> float:
        """The base task's validation score; the metric where the base task has none."""
        own = getattr(self.base, "validation_score", None)
        return float(own(model)) if callable(own) else call_metric(self.metric, model)

    def calibration(self, n: int = 256) -> list[Batch]:
        return self.base.calibration(n)

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        return self.base.forward(model, batch)

    def train_batches(self, batch_size: int = 64, seed: int = 0) -> list[tuple[Batch, torch.Tensor]]:
        return self.base.train_batches(batch_size, seed)

    @property
    def labelled(self) -> bool:
        return getattr(self.base, "labelled", type(self.base).train_batches is not Task.train_batches)


def metric_name(metric: Metric) -> str:
    name = getattr(metric, "__name__", "")
    return name if name.isidentifier() and name != "<lambda>" else "metric"


def call_metric(metric: Metric, model: nn.Module) -> float:
    """`metric(model)` as a float (a one-line error when it is not a number)."""
    value = metric(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SlimError(f"metric(model) must return a number (higher is better), got a {type(value).__name__}")
    return float(value)




class _Samples:
    """Batches whose tensors concatenate along dim 0: kept as one set of tensors, cut at will."""

    def __init__(self, pairs: list[Pair]):
        first_in, first_t = pairs[0]
        self.inputs = {k: torch.cat([p[0][k] for p in pairs]) for k in first_in}
        self.target = torch.cat([p[1] for p in pairs]) if first_t is not None else None  # type: ignore[misc]
        self.size = len(next(iter(self.inputs.values())))

    @staticmethod
    def fits(pairs: list[Pair]) -> bool:
        first_in, first_t = pairs[0]
        if not first_in or not all(isinstance(t, torch.Tensor) and t.dim() for t in first_in.values()):
            return False
        for inputs, target in pairs:
            if rows_of((inputs, target)) is None or inputs.keys() != first_in.keys():
                return False
            if (target is None) != (first_t is None):
                return False
            for k, t in inputs.items():
                ref = first_in[k]
                if not isinstance(t, torch.Tensor) or t.shape[1:] != ref.shape[1:] or t.dtype != ref.dtype:
                    return False
            if target is not None and (target.shape[1:] != first_t.shape[1:] or target.dtype != first_t.dtype):  # type: ignore[union-attr]
                return False
        return True

    def take(self, index: torch.Tensor) -> Pair:
        return ({k: v[index] for k, v in self.inputs.items()},
                None if self.target is None else self.target[index])

    def batches(self, index: torch.Tensor, batch_size: int) -> list[Pair]:
        return [self.take(chunk) for chunk in index.split(batch_size)]


class UserTask(Task):
    """A task made from the user's batches (see the module doc and `task_from`)."""

    name = "your data"

    def __init__(self, pairs: list[Pair], metric: Metric | None, model: nn.Module, seed: int = 0):
        self.metric, self.seed = metric, seed
        self.batch_size = rows_of(pairs[0]) or 1
        self.samples_ = _Samples(pairs) if _Samples.fits(pairs) else None
        self.train_, self.val_, self.held_out = self._split(pairs, seed)
        targets = [t for _, t in self.train_]
        self.labelled = bool(targets) and all(t is not None and not t.is_floating_point() and not t.is_complex()
                                              for t in targets)
        self.reference_ = self._outputs(model)
        self.mode = self._mode()
        self.score_name = metric_name(metric) if metric is not None else self.mode

    def _split(self, pairs: list[Pair], seed: int) -> tuple[list[Pair], list[Pair], bool]:
        if self.samples_ is not None:
            n = self.samples_.size
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            n_val = round(VAL_FRACTION * n) if n >= 5 else 0
            if n_val:
                self.train_index, val_index = order[n_val:], order[:n_val].sort().values
                return (self.samples_.batches(self.train_index, self.batch_size),
                        self.samples_.batches(val_index, self.batch_size), True)
            self.train_index = order
            whole = self.samples_.batches(torch.arange(n), self.batch_size)
            return whole, whole, False
        if len(pairs) >= 5:
            val = [p for i, p in enumerate(pairs) if i % 5 == 4]
            return [p for i, p in enumerate(pairs) if i % 5 != 4], val, True
        if len(pairs) >= 2:
            return pairs[:-1], pairs[-1:], True
        return pairs, pairs, False

    def describe(self) -> str:
        """Where the validation score comes from, in words."""
        rows = sum(rows_of(p) or 1 for p in self.val_)
        where = f"{rows} held-back samples of your data" if self.held_out else "your data (too little to hold any back)"
        return f"{self.mode} on {where}"

    @torch.inference_mode()
    def _outputs(self, model: nn.Module) -> list[torch.Tensor]:
        was = model.training
        model.eval()
        try:
            return [self.forward(model, inputs).detach().float() for inputs, _ in self.val_]
        except SlimError:
            raise
        except Exception as exc:   # the user's model rejected the user's batch: say so in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SlimError(f"data: the model cannot run on your batches ({type(exc).__name__}: {first[:200]}); "
                            "batches must be what model(...) takes: a tensor, an (inputs, target) pair, or a dict "
                            "of keyword inputs") from None
        finally:
            model.train(was)

    def _mode(self) -> str:
        ref = self.reference_[0]
        if self.labelled:
            target = self.val_[0][1]
            if target is not None and ref.dim() >= 2 and tuple(ref.shape[:-1]) == tuple(target.shape):
                top = max(int(t.max()) for _, t in self.train_ + self.val_ if t is not None and t.numel())
                if top < ref.shape[-1]:
                    return "accuracy"
        return "agreement" if ref.dim() == 2 and ref.shape[1] >= 2 else "cosine"

    # -- the Task interface -------------------------------------------------------------------
    def example_inputs(self, batch_size: int) -> Batch:
        if self.samples_ is None:
            return dict(self.train_[0][0])
        source = self.val_ if self.held_out else self.train_
        inputs = source[0][0]
        have = len(next(iter(inputs.values())))
        reps = -(-batch_size // have)
        return {k: v.repeat(reps, *([1] * (v.dim() - 1)))[:batch_size].clone() for k, v in inputs.items()}

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        return output_tensor(model(**batch))

    def score(self, model: nn.Module) -> float:
        """The metric when given, else the validation score."""
        return call_metric(self.metric, model) if self.metric is not None else self.validation_score(model)

    def validation_score(self, model: nn.Module) -> float:
        """Accuracy (labelled data) or fidelity to the original (agreement / cosine) on the held-back split."""
        was = model.training
        model.eval()
        try:
            with torch.inference_mode():
                outs = [self.forward(model, inputs).float() for inputs, _ in self.val_]
        finally:
            model.train(was)
        if self.mode == "accuracy":
            hits = total = 0
            for out, (_, target) in zip(outs, self.val_, strict=True):
                keep = target >= 0          # -100 and other negative ids are ignored, as cross-entropy does
                hits += int((out.argmax(-1)[keep] == target[keep]).sum())
                total += int(keep.sum())
            return hits / max(1, total)
        if self.mode == "agreement":
            same = sum(int((o.argmax(-1) == r.argmax(-1)).sum()) for o, r in zip(outs, self.reference_, strict=True))
            return same / max(1, sum(len(r) for r in self.reference_))
        cos = [nn.functional.cosine_similarity(o.reshape(len(o), -1), r.reshape(len(r), -1), dim=1, eps=1e-12)
               for o, r in zip(outs, self.reference_, strict=True)]
        value = float(torch.cat(cos).mean())
        return value if math.isfinite(value) else 0.0

    def calibration(self, n: int = 256) -> list[Batch]:
        """Inputs of the training part (never the held-back split), up to `n` samples."""
        if self.samples_ is not None:
            index = self.train_index[:n].sort().values
            return [inputs for inputs, _ in self.samples_.batches(index, CALIB_CHUNK)]
        out, seen = [], 0
        for inputs, _ in self.train_:
            if seen >= n:
                break
            out.append(inputs)
            seen += len(next(iter(inputs.values()))) if inputs else 1
        return out

    def train_batches(self, batch_size: int = 64, seed: int = 0) -> list[tuple[Batch, torch.Tensor]]:
        """Shuffled (inputs, target) batches of the training part; only for labelled data."""
        if not self.labelled:
            raise NotImplementedError("your data has no class labels (batches of inputs only, or targets that "
                                      "are not integer class ids)")
        gen = torch.Generator().manual_seed(seed)
        if self.samples_ is not None:
            order = self.train_index[torch.randperm(len(self.train_index), generator=gen)]
            return self.samples_.batches(order, batch_size)  # type: ignore[return-value]
        order = torch.randperm(len(self.train_), generator=gen).tolist()
        return [self.train_[i] for i in order]  # type: ignore[misc]
