"""One candidate: apply its stages to a fresh copy of the model, stop early when the held-out
score already fell too far, save the artifact and measure it (real bytes on disk, held-out score,
latency).

>>> rec = run_candidate(model, stages, task, score, budget, out / "trials" / "0003.slim")
>>> rec.state, rec.bytes, rec.val_score
('complete', 4109, 0.988827)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from slimkit.autosearch.certify import certified
from slimkit.autosearch.stages import OutOfTime, reseeded, run_stages
from slimkit.core.latency import median_ms
from slimkit.core.methods import MethodConfig
from slimkit.core.task import Task
from slimkit.io.artifact import save


@dataclass(frozen=True)
class Budget:
    """The accuracy budget and the clock a candidate runs under."""

    base_score: float                 # held-out score of the original model
    max_drop: float                   # points (100 x score)
    deadline: float                   # time.monotonic() after which no stage starts
    abort_drop: float                 # points: stop a candidate after a stage that lost more

    def drop(self, score: float) -> float:
        return round((self.base_score - score) * 100, 4)


@dataclass
class TrialRecord:
    """Everything measured about one candidate (kept in search.json, shown in the report)."""

    number: int
    params: dict
    stages: list[dict]
    distributions: dict = field(default_factory=dict)   # optuna's, as JSON, to rebuild the study
    state: str = "complete"           # complete | pruned | failed
    bytes: int | None = None
    val_score: float | None = None
    drop_pts: float | None = None
    latency_ms: dict = field(default_factory=dict)
    seconds: float = 0.0
    path: str | None = None           # artifact, relative to the search folder, while it is kept
    error: str | None = None
    stopped_after: int | None = None  # stage index after which a pruned candidate stopped
    confirm_drop_pts: float | None = None   # drop of a second run with other training seeds
    certificate: dict | None = None   # cross-validated drop and its upper bound (search.certify)
    cert_stopped: str | None = None   # certification not done: "time" (not started, ran out) or "error"
    cert_note: str | None = None      # why, in one line
    cert_seconds: float = 0.0         # spent certifying it (not in `seconds`, the candidate's own run)
    threads: int | None = None        # torch threads it trained with (fewer on a busy machine)

    @property
    def measured(self) -> bool:
        return self.state == "complete" and self.bytes is not None and self.val_score is not None

    def feasible(self, max_drop: float) -> bool:
        return self.measured and self.drop_pts is not None and self.drop_pts <= max_drop + 1e-9

    def confirmed(self, max_drop: float) -> bool:
        """Within the budget in its own run, and certified: by cross-validation where the search has
        it (the upper confidence bound of the drop within the budget), else by a second run with
        other training seeds."""
        if self.certificate is not None:
            return self.feasible(max_drop + self.certificate.get("screen_slack_pts", 0.0)) and \
                certified(self.certificate, max_drop)
        if not self.feasible(max_drop):
            return False
        return self.confirm_drop_pts is not None and self.confirm_drop_pts <= max_drop + 1e-9

    def worst_drop(self) -> float | None:
        """The drop the sampler is told: with a complete certificate its upper bound (and the
        validation drop less the screen's slack), else the worse of the two runs."""
        cert = self.certificate
        if cert is not None and cert.get("folds") == cert.get("of") and self.drop_pts is not None:
            return max(cert["ucb_pts"], self.drop_pts - cert.get("screen_slack_pts", 0.0))
        drops = [d for d in (self.drop_pts, self.confirm_drop_pts) if d is not None]
        return max(drops) if drops else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def stage_dict(config: MethodConfig) -> dict:
    """A config as a recipe stage: `{"method": ..., options that differ from the defaults}`."""
    return {"method": config.method, **config.model_dump(mode="json", exclude_defaults=True)}


class _Stopped(Exception):
    """A candidate stopped after a stage: too far below the budget for the later stages to bring it back."""


def run_candidate(model: nn.Module, stages: list[MethodConfig], task: Task, score: Callable[[nn.Module], float],
                  budget: Budget, path: Path, record: TrialRecord) -> TrialRecord:
    """Fill `record` by running `stages` on a copy of `model`; the artifact is written to `path`.

    Raises `OutOfTime` if the deadline passes before a stage starts; any other exception of a
    method is recorded as a failed candidate (the search goes on).
    """

    def stop_if_far(i: int, _config: MethodConfig, net: nn.Module) -> None:
        """After every stage but the last: stop (`record` marked "pruned") if it lost too much."""
        if i < len(stages) - 1:
            value = score(net)
            if budget.drop(value) > budget.abort_drop:
                record.state, record.val_score = "pruned", round(value, 6)
                record.drop_pts, record.stopped_after = budget.drop(value), i + 1
                raise _Stopped

    start = time.monotonic()
    try:
        net = run_stages(model, stages, task, budget.deadline, on_stage=stop_if_far).eval()
        value = score(net)
        save(net, path, info={"search_trial": record.number})
        record.bytes = path.stat().st_size
        record.val_score, record.drop_pts = round(value, 6), budget.drop(value)
        record.latency_ms = quick_latency(net, task)
        record.path = f"{path.parent.name}/{path.name}"
    except _Stopped:
        pass
    except (OutOfTime, KeyboardInterrupt):
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:   # a candidate the methods refuse (e.g. a combination that does not compose)
        path.unlink(missing_ok=True)
        record.state = "failed"
        record.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return _timed(record, start)


def confirm_drop(model: nn.Module, stages: list[MethodConfig], task: Task, score: Callable[[nn.Module], float],
                 budget: Budget, record: TrialRecord) -> None:
    """Fill `record.confirm_drop_pts` with the held-out drop of a second run of `stages` with other
    training seeds (the first run's, if the recipe has no seed); if the budget runs out or a stage
    fails, `record.cert_stopped` ("time" or "error") and `record.cert_note` say so instead.

    A small held-out set lets some candidates pass by luck; among hundreds, the smallest that
    passes is often one of them. A second, independent run rarely is lucky twice."""
    again = reseeded(stages)
    if again is None:
        record.confirm_drop_pts = record.drop_pts
        return
    try:
        net = run_stages(model, again, task, budget.deadline, cut=False).eval()
        record.confirm_drop_pts, record.cert_stopped, record.cert_note = budget.drop(score(net)), None, None
    except OutOfTime:
        record.cert_stopped, record.cert_note = "time", "the second run (other training seeds) ran out of time"
    except KeyboardInterrupt:
        raise
    except Exception as exc:   # counted as not confirmed
        first = str(exc).splitlines()[0] if str(exc) else ""
        record.cert_stopped = "error"
        record.cert_note = f"the second run (other training seeds) failed: {type(exc).__name__}: {first}"[:300]


def quick_latency(model: nn.Module, task: Task, seconds: float = 2.0) -> dict[str, float]:
    """Median ms at batch 1 and 32 on one thread, with fewer repeats for slow models (about
    `seconds` per batch size, 3 to 20 runs), so that measuring never dominates a search."""
    out = {}
    for batch in (1, 32):
        inputs = task.example_inputs(batch)

        def call(inputs=inputs):
            return task.forward(model, inputs)

        start = time.perf_counter()
        with torch.inference_mode():
            call()
        first = time.perf_counter() - start
        repeats = int(min(20, max(3, seconds / max(first, 1e-6))))
        out[f"batch{batch}"] = round(median_ms(call, repeats=repeats, warmup=1, threads=1), 4)
    return out


def _timed(record: TrialRecord, start: float) -> TrialRecord:
    record.seconds = round(time.monotonic() - start, 3)
    return record
