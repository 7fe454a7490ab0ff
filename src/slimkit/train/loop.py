"""The one training loop: distillation, recovery, prune fine-tuning, QAT, codebook fine-tuning and
the zoo's own training all run through `fit`.

Adam or AdamW, an LR schedule per step (warmup + cosine / linear / constant, optionally held at the
peak for some epochs) or per epoch (torch's `CosineAnnealingLR`), the best epoch on a validation
score kept (also when training is interrupted), early stopping, a progress callback, pickle-free
checkpoints and resume, deterministic under a seed. `Hooks` plug in what a method adds: code before
and after every optimizer step (a pruning schedule, masks re-applied), a penalty on the weights,
tensors to train that are not module parameters (codebooks), a key a checkpoint must match.

Under `torchrun --nproc_per_node N` (or any initialised `torch.distributed` group) the same call is
data-parallel: each rank takes rows ``rank::N`` of every batch, its loss weighted by its share of
the rows, and the gradients are averaged (by `DistributedDataParallel`, or directly for tensors that
are not module parameters), which is the single-process batch-mean gradient; all replicas end
identical. Nothing in the caller changes.

>>> result = fit(student, loss_fn, batches, LoopSettings(epochs=30, seed=0), validate=score)
>>> result.best_score, result.epochs_run
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch
from slimkit.dist.collectives import world
from slimkit.dist.data_parallel import average_grads_, broadcast_, data_parallel, shard_rows
from slimkit.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint

Target = torch.Tensor | None
LossFn = Callable[[nn.Module, Batch, Target], torch.Tensor]
Batches = Callable[[int], list[tuple[Batch, Target]]]
SCHEDULES = ("cosine", "linear", "constant", "cosine-epoch")
OPTIMIZERS = ("adamw", "adam")


@dataclass(frozen=True)
class LoopSettings:
    """How to train. `warmup` is a fraction of all steps; `hold` epochs run at the peak LR before
    the schedule decays, and only the epochs after them compete for "best"; `patience` epochs
    without a better validation score stop early (None: run all epochs, still keep the best).

    `schedule` is per optimizer step (cosine, linear, constant) or per epoch (`cosine-epoch`:
    torch's `CosineAnnealingLR(T_max=epochs)`, stepped after every epoch). `optimizer`: `adamw`
    (decoupled weight decay) or `adam` (weight decay as an L2 term). `seed` seeds torch's global
    RNG at the start (None leaves it as the caller set it)."""

    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | linear | constant | cosine-epoch
    warmup: float = 0.0
    patience: int | None = None
    grad_clip: float | None = None
    seed: int | None = 0
    progress: bool = False
    time_limit: float | None = None  # seconds: no new epoch starts after this much training
    time_schedule: bool = False  # LR schedule runs to time_limit (whichever of steps/time is further); stop at it
    optimizer: str = "adamw"  # adamw | adam
    hold: int = 0  # epochs at the peak LR before the schedule decays; the best epoch is chosen after them
    validate_start: bool = False  # the starting weights compete with the trained epochs for "best"
    freeze_norm: bool = False  # BatchNorm layers stay in eval mode (running statistics frozen) in training
    data_parallel: bool = True  # under torchrun split every batch across ranks; False: each rank trains alone
    label: str = "training"  # the progress bar's text

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown LR schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        if self.time_schedule and self.time_limit is None:
            raise ValueError("time_schedule needs a time_limit")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.hold < 0:
            raise ValueError(f"hold must be >= 0 epochs, got {self.hold}")
        if self.schedule == "cosine-epoch" and (self.warmup or self.hold or self.time_schedule):
            raise ValueError("the cosine-epoch schedule takes no warmup, hold or time_schedule")


@dataclass
class Hooks:
    """What a training path plugs into `fit` (every field optional).

    `params`: train only these tensors (e.g. codebooks that are not module parameters; the
    student's own parameters then stay as they are unless listed); without it, every trainable
    parameter of the student and `extra`. `penalty()` is added to every step's loss (after the
    data term is weighted by the rank's share of the rows). `resume_key` is stored in a checkpoint,
    and a checkpoint written with another is refused."""

    before_step: Callable[[int], None] | None = None  # before optimizer step i (a pruning schedule)
    after_step: Callable[[int], None] | None = None  # after optimizer step i (masks re-applied)
    penalty: Callable[[], torch.Tensor] | None = None
    params: Sequence[torch.Tensor] | None = None
    resume_key: dict | None = None


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
    """Multiplier of the base LR at optimizer step `step` of `total` (per-step schedules)."""
    warm = int(settings.warmup * total)
    if step < warm:
        return (step + 1) / warm
    if settings.schedule in ("constant", "cosine-epoch"):
        return 1.0
    start = max(warm, settings.hold * (total // settings.epochs))
    if step < start:
        return 1.0
    frac = (step - start) / max(1, total - start)
    if settings.schedule == "linear":
        return 1.0 - frac
    return 0.5 * (1.0 + math.cos(math.pi * frac))


class _Objective(nn.Module):
    """Student + extra trainable modules (projections) whose forward is the loss, so that one
    DDP wrapper synchronises all their gradients."""

    def __init__(self, student: nn.Module, extra: nn.Module | None, loss_fn: LossFn,
                 penalty: Callable[[], torch.Tensor] | None):
        super().__init__()
        self.student = student
        self.extra = extra if extra is not None else nn.Module()
        self.loss_fn = loss_fn
        self.penalty = penalty
        self.trained: list[torch.Tensor] = []

    def forward(self, inputs: Batch, target: Target, weight: float = 1.0) -> torch.Tensor:
        if weight == 0.0:  # a rank with no rows of this batch still joins the gradient reduction
            loss = sum(p.sum() for p in self.trained) * 0.0
        else:
            loss = self.loss_fn(self.student, inputs, target)
            if weight != 1.0:
                loss = loss * weight
        if self.penalty is not None:
            loss = loss + self.penalty()
        return loss


def _optimizer(params: list[torch.Tensor], settings: LoopSettings) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=settings.lr, weight_decay=settings.weight_decay)


class _Weights:
    """The trained state: the student's state dict, or the given tensors (`Hooks.params`)."""

    def __init__(self, student: nn.Module, params: list[torch.Tensor] | None):
        self.student, self.params = student, params

    def snapshot(self) -> dict[str, torch.Tensor]:
        if self.params is not None:
            return {str(i): p.detach().clone() for i, p in enumerate(self.params)}
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    @torch.no_grad()
    def restore(self, best: dict[str, torch.Tensor]) -> None:
        if self.params is None:
            self.student.load_state_dict(best)
        else:
            for i, p in enumerate(self.params):
                p.copy_(best[str(i)])


def _train_mode(student: nn.Module, freeze_norm: bool) -> None:
    student.train()
    if freeze_norm:
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def fit(student: nn.Module, loss_fn: LossFn, batches: Batches, settings: LoopSettings,
        validate: Callable[[nn.Module], float] | None = None, extra: nn.Module | None = None,
        on_epoch: Callable[[EpochInfo], None] | None = None,
        checkpoint: str | os.PathLike | None = None, *, hooks: Hooks | None = None) -> FitResult:
    """Train `student` (and `extra`) to minimise `loss_fn(student, inputs, target)`.

    `batches(epoch)` gives that epoch's batches (deterministic); `validate(student)` a score,
    higher is better: the student ends with its best-scoring weights (also when interrupted).
    `on_epoch(EpochInfo)` runs after every epoch on rank 0. With `checkpoint` (a folder), state is
    saved after every epoch and a run restarted on the same folder resumes where it stopped,
    ending bit-identical to an uninterrupted run. `hooks`: what a training path adds (`Hooks`).
    """
    hooks = hooks or Hooks()
    rank, size = world() if settings.data_parallel else (0, 1)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    objective = _Objective(student, extra, loss_fn, hooks.penalty)
    given = list(hooks.params) if hooks.params is not None else None
    params = given if given is not None else [p for p in objective.parameters() if p.requires_grad]
    if not params:
        raise SlimError("the student has no trainable parameters")
    if given is not None and checkpoint is not None:
        raise ValueError("checkpoints hold module parameters; Hooks.params cannot be checkpointed")
    objective.trained = params
    opt = _optimizer(params, settings)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs)
             if settings.schedule == "cosine-epoch" else None)
    state = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": 0, "bad": 0, "history": []}
    weights, best = _Weights(student, given), None
    ckpt = Path(checkpoint) / CHECKPOINT if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state, best = load_checkpoint(ckpt, objective, opt, settings, sched, hooks.resume_key)
    model: nn.Module = objective
    if size > 1 and given is None:
        model = data_parallel(objective)  # DDP: broadcasts rank 0's weights, averages gradients
    elif size > 1:
        broadcast_(params)
    if best is None:
        best = weights.snapshot()
    if settings.validate_start and validate is not None and state["epoch"] == 0:
        student.eval()
        state["best_score"] = validate(student)
    total = settings.epochs * max(1, len(batches(0)))
    bar = _Progress(settings.progress and rank == 0, settings.epochs, settings.label)
    started, first = time.perf_counter(), state["epoch"]
    try:
        for epoch in range(first, settings.epochs):
            if state["bad"] and settings.patience and state["bad"] >= settings.patience:
                break
            late = epoch > first and time.perf_counter() - started > (settings.time_limit or math.inf)
            if settings.time_limit and _agreed(late, size):
                break
            _train_mode(student, settings.freeze_norm)
            losses = []
            for inputs, target in batches(epoch):
                step = state["step"]
                if settings.time_schedule:  # progress in time when that is further than in steps
                    frac = _max_over_ranks(time.perf_counter() - started, size) / settings.time_limit
                    if frac >= 1.0:
                        break
                    step = max(step, int(frac * total))
                inputs, target, weight = shard_rows(inputs, target, rank, size)
                if sched is None:
                    for group in opt.param_groups:
                        group["lr"] = settings.lr * lr_factor(step, total, settings)
                if hooks.before_step is not None:
                    hooks.before_step(state["step"])
                opt.zero_grad(set_to_none=True)
                loss = model(inputs, target, weight)
                if not torch.isfinite(loss):
                    raise SlimError(f"training loss became {loss.item()} at epoch {epoch + 1}; "
                                    "lower the learning rate")
                loss.backward()
                if given is not None and size > 1:
                    average_grads_(params)
                if settings.grad_clip:
                    nn.utils.clip_grad_norm_(params, settings.grad_clip)
                opt.step()
                if hooks.after_step is not None:
                    hooks.after_step(state["step"])
                state["step"] += 1
                losses.append(loss.item())
                bar.step(epoch, losses[-1])
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            student.eval()
            score = validate(student) if validate is not None else None
            if epoch < settings.hold:  # still held: the current weights stand in, nothing is best yet
                best = weights.snapshot()
            elif score is None or state["best_score"] is None or score > state["best_score"]:
                state["best_score"], state["best_epoch"], state["bad"] = score, epoch + 1, 0
                best = weights.snapshot()
            else:
                state["bad"] += 1
            state["epoch"] = epoch + 1
            mean_loss = float(np.mean(losses)) if losses else float("nan")
            state["history"].append({"epoch": epoch + 1, "loss": mean_loss, "score": score})
            stop = bool(settings.patience) and state["bad"] >= settings.patience
            if ckpt is not None and rank == 0:
                save_checkpoint(ckpt, objective, opt, best, state, settings, sched, hooks.resume_key)
            if on_epoch is not None and rank == 0:
                on_epoch(EpochInfo(epoch + 1, mean_loss, score, lr, state["best_score"], stop))
            if stop:
                break
    finally:
        bar.close()
        weights.restore(best)  # also when interrupted: the best weights so far
        student.eval()
    return FitResult(state["best_score"], state["best_epoch"], state["epoch"], state["history"])


def _max_over_ranks(value: float, size: int) -> float:
    """The largest `value` over all ranks (so that time-based choices agree)."""
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _agreed(flag: bool, size: int) -> bool:
    """True when any rank says so (all ranks must stop at the same epoch)."""
    if size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t)
    return bool(t.item())


class _Progress:
    """A rich progress bar with the running loss (only when asked, on rank 0)."""

    def __init__(self, enabled: bool, epochs: int, label: str):
        self.bar = None
        if enabled:
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=epochs)
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


__all__ = ["CHECKPOINT", "Batches", "EpochInfo", "FitResult", "Hooks", "LoopSettings", "LossFn", "fit",
           "lr_factor"]
