"""The training loop every training-time method can share: AdamW, a warmup + cosine/linear LR
schedule, early stopping on a validation score, a progress callback, pickle-free checkpoints
(safetensors with a JSON header) and resume, deterministic under a seed, DDP-ready.

Under `torchrun --nproc_per_node N` (or any initialised `torch.distributed` group) the same
call trains with `DistributedDataParallel`: each rank takes its slice of every batch, gradients
are averaged, and all replicas end identical. Nothing in the caller changes.

>>> result = fit(student, loss_fn, batches, LoopSettings(epochs=30, seed=0), validate=score)
>>> result.best_score, result.epochs_run
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch
from slimkit.dist.collectives import world
from slimkit.io.safetensors_file import SafetensorsReader, atomic_write, serialize

Target = torch.Tensor | None
LossFn = Callable[[nn.Module, Batch, Target], torch.Tensor]
Batches = Callable[[int], list[tuple[Batch, Target]]]
CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class LoopSettings:
    """How to train. `warmup` is a fraction of all steps; `patience` epochs without a better
    validation score stop early (None: run all epochs, still keep the best)."""

    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | linear | constant
    warmup: float = 0.0
    patience: int | None = None
    grad_clip: float | None = None
    seed: int = 0
    progress: bool = False
    time_limit: float | None = None  # seconds: no new epoch starts after this much training
    time_schedule: bool = False  # LR schedule runs to time_limit (whichever of steps/time is further); stop at it

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"unknown LR schedule {self.schedule!r} (known: cosine, linear, constant)")
        if self.time_schedule and self.time_limit is None:
            raise ValueError("time_schedule needs a time_limit")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")


@dataclass
class EpochInfo:
    epoch: int
    loss: float
    score: float | None
    lr: float
    best_score: float | None
    stopped: bool = False


@dataclass
class FitResult:
    best_score: float | None
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def lr_factor(step: int, total: int, settings: LoopSettings) -> float:
    """Multiplier of the base LR at optimizer step `step` of `total`."""
    warm = int(settings.warmup * total)
    if step < warm:
        return (step + 1) / warm
    if settings.schedule == "constant":
        return 1.0
    frac = (step - warm) / max(1, total - warm)
    if settings.schedule == "linear":
        return 1.0 - frac
    return 0.5 * (1.0 + math.cos(math.pi * frac))


class _Objective(nn.Module):
    """Student + extra trainable modules (projections) whose forward is the loss, so that one
    DDP wrapper synchronises all their gradients."""

    def __init__(self, student: nn.Module, extra: nn.Module | None, loss_fn: LossFn):
        super().__init__()
        self.student = student
        self.extra = extra if extra is not None else nn.Module()
        self.loss_fn = loss_fn

    def forward(self, inputs: Batch, target: Target) -> torch.Tensor:
        return self.loss_fn(self.student, inputs, target)


def _shard(inputs: Batch, target: Target, rank: int, size: int) -> tuple[Batch, Target]:
    if size == 1:
        return inputs, target
    return ({k: v[rank::size] for k, v in inputs.items()},
            None if target is None else target[rank::size])


def fit(student: nn.Module, loss_fn: LossFn, batches: Batches, settings: LoopSettings,
        validate: Callable[[nn.Module], float] | None = None, extra: nn.Module | None = None,
        on_epoch: Callable[[EpochInfo], None] | None = None,
        checkpoint: str | os.PathLike | None = None) -> FitResult:
    """Train `student` (and `extra`) to minimise `loss_fn(student, inputs, target)`.

    `batches(epoch)` gives that epoch's batches (deterministic); `validate(student)` a score,
    higher is better: the student ends with its best-scoring weights. With `checkpoint` (a
    folder), state is saved after every epoch and a run restarted on the same folder resumes
    where it stopped, ending bit-identical to an uninterrupted run.
    """
    rank, size = world()
    torch.manual_seed(settings.seed)
    objective = _Objective(student, extra, loss_fn)
    params = [p for p in objective.parameters() if p.requires_grad]
    if not params:
        raise SlimError("the student has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    state = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": 0, "bad": 0, "history": []}
    best = _clone(student)
    ckpt = Path(checkpoint) / CHECKPOINT if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state, best = _load_checkpoint(ckpt, objective, opt, settings)
    model: nn.Module = objective
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(objective)
    total = settings.epochs * max(1, len(batches(0)))
    bar = _Progress(settings.progress and rank == 0, settings.epochs)
    started, first = time.perf_counter(), state["epoch"]
    try:
        for epoch in range(first, settings.epochs):
            if state["bad"] and settings.patience and state["bad"] >= settings.patience:
                break
            late = epoch > first and time.perf_counter() - started > (settings.time_limit or math.inf)
            if settings.time_limit and _agreed(late, size):
                break
            student.train()
            losses = []
            for inputs, target in batches(epoch):
                step = state["step"]
                if settings.time_schedule:  # progress in time when that is further than in steps
                    frac = _max_over_ranks(time.perf_counter() - started, size) / settings.time_limit
                    if frac >= 1.0:
                        break
                    step = max(step, int(frac * total))
                inputs, target = _shard(inputs, target, rank, size)
                for group in opt.param_groups:
                    group["lr"] = settings.lr * lr_factor(step, total, settings)
                opt.zero_grad(set_to_none=True)
                loss = model(inputs, target)
                if not torch.isfinite(loss):
                    raise SlimError(f"training loss became {loss.item()} at epoch {epoch + 1}; "
                                    "lower the learning rate")
                loss.backward()
                if settings.grad_clip:
                    nn.utils.clip_grad_norm_(params, settings.grad_clip)
                opt.step()
                state["step"] += 1
                losses.append(loss.item())
                bar.step(epoch, losses[-1])
            student.eval()
            score = validate(student) if validate is not None else None
            if score is None or state["best_score"] is None or score > state["best_score"]:
                state["best_score"], state["best_epoch"], state["bad"] = score, epoch + 1, 0
                best = _clone(student)
            else:
                state["bad"] += 1
            state["epoch"] = epoch + 1
            mean_loss = float(np.mean(losses)) if losses else float("nan")
            state["history"].append({"epoch": epoch + 1, "loss": mean_loss, "score": score})
            stop = bool(settings.patience) and state["bad"] >= settings.patience
            if ckpt is not None and rank == 0:
                _save_checkpoint(ckpt, objective, opt, best, state, settings)
            if on_epoch is not None and rank == 0:
                on_epoch(EpochInfo(epoch + 1, mean_loss, score, opt.param_groups[0]["lr"],
                                   state["best_score"], stop))
            if stop:
                break
    finally:
        bar.close()
    student.load_state_dict(best)
    student.eval()
    return FitResult(state["best_score"], state["best_epoch"], state["epoch"], state["history"])


def _max_over_ranks(value: float, size: int) -> float:
    """The largest `value` over all ranks (so that time-based choices agree)."""
    if size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _agreed(flag: bool, size: int) -> bool:
    """True when any rank says so (all ranks must stop at the same epoch)."""
    if size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)])
    dist.all_reduce(t)
    return bool(t.item())


def _clone(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Progress:
    """A rich progress bar with the running loss (only when asked, on rank 0)."""

    def __init__(self, enabled: bool, epochs: int):
        self.bar = None
        if enabled:
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("distilling", total=epochs)
            self.epoch = -1

    def step(self, epoch: int, loss: float) -> None:
        if self.bar is None:
            return
        if epoch != self.epoch:
            self.epoch = epoch
            self.bar.update(self.task, completed=epoch)
        self.bar.update(self.task, description=f"epoch {epoch + 1} loss {loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --- checkpoints: tensors in safetensors, everything else in its JSON header -----------------


def _settings_key(settings: LoopSettings) -> dict:
    skip = ("epochs", "progress", "patience", "time_limit")
    return {k: v for k, v in asdict(settings).items() if k not in skip}


def _save_checkpoint(path: Path, objective: nn.Module, opt: torch.optim.Optimizer,
                     best: dict[str, torch.Tensor], state: dict, settings: LoopSettings) -> None:

    arrays = {f"model.{k}": v for k, v in objective.state_dict().items()}
    arrays.update({f"best.{k}": v for k, v in best.items()})
    opt_state = opt.state_dict()
    for idx, slots in opt_state["state"].items():
        arrays.update({f"optim.{idx}.{name}": torch.as_tensor(t) for name, t in slots.items()})
    arrays["rng"] = torch.get_rng_state()
    header = {"state": state, "param_groups": opt_state["param_groups"], "settings": _settings_key(settings)}
    np_arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in arrays.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, serialize(np_arrays, {"slimkit_checkpoint": json.dumps(header)}))


def _load_checkpoint(path: Path, objective: nn.Module, opt: torch.optim.Optimizer,
                     settings: LoopSettings) -> tuple[dict, dict[str, torch.Tensor]]:

    with SafetensorsReader(path) as reader:
        try:
            header: dict[str, Any] = json.loads(reader.metadata["slimkit_checkpoint"])
        except (KeyError, ValueError):
            raise SlimError(f"{path} is not a slimkit training checkpoint") from None
        arrays = {k: torch.from_numpy(np.array(reader.get(k))) for k in reader.keys()}
    if header.get("settings") != _settings_key(settings):
        raise SlimError(f"{path} was written with other training settings; use a new checkpoint "
                        "folder or the same settings")
    try:
        objective.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in arrays.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                slots.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": slots, "param_groups": header["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SlimError(f"{path} does not match this student: {str(exc).splitlines()[0]}") from None
    torch.set_rng_state(arrays["rng"])
    best = {k[5:]: v for k, v in arrays.items() if k.startswith("best.")}
    return copy.deepcopy(header["state"]), best


# public names for other training loops (QAT) that checkpoint the same way
save_checkpoint = _save_checkpoint
load_checkpoint = _load_checkpoint
