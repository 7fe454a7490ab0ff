"""`search`: the smallest artifact within an accuracy budget, found under a time budget.

Per-layer sensitivity first (where it is cheap), then optuna's constraint-aware TPE sampler
proposes recipes; candidates that already lost too much after a stage are stopped early. Every
candidate's bytes, held-out score and latency are kept; after each one `search.json`,
`pareto.json` and `best.slim` are rewritten atomically, so an interrupted search keeps its best
so far and the same call resumes it. Candidates are chosen on held-out data; the final best is
reported on the test data.

The time budget covers the whole call: candidates and their certification stop early enough for
finishing to end within it (`slimkit.autosearch.budget.TimePlan`, `slimkit.autosearch.certifier`),
and best.slim is always written (`slimkit.autosearch.outcome`).

>>> result = search("builtin:lenet-300-100", max_drop=0.5, out="lenet-search", budget="20m")
>>> result.best["ratio"], result.best["test_drop_pts"], result.certified
(49.4, 0.0, True)
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from slimkit.autosearch.budget import TimePlan, fair_threads, parse_duration
from slimkit.autosearch.certifier import Certifier
from slimkit.autosearch.certify import Certification, CrossValidation
from slimkit.autosearch.finish import SearchResult, finish, prepare_finish
from slimkit.autosearch.guide import layer_sensitivity, protect_order
from slimkit.autosearch.mutate import mutate
from slimkit.autosearch.outcome import choose
from slimkit.autosearch.pareto import (
    BEST,
    PARETO,
    STATE,
    TRIALS,
    VERSION,
    best_record,
    front,
    pareto_doc,
    points,
    read_state,
    write_json,
)
from slimkit.autosearch.space import DigitsSpace, Space
from slimkit.autosearch.space_encoder import EmbeddingSpace
from slimkit.autosearch.space_registered import RegisteredSpace
from slimkit.autosearch.stages import OutOfTime
from slimkit.autosearch.trial import Budget, TrialRecord, quick_latency, run_candidate, stage_dict
from slimkit.autosearch.validation import validation_setup
from slimkit.core.errors import SlimError
from slimkit.core.optional import require
from slimkit.core.provenance import base_of, task_for
from slimkit.core.task import Task
from slimkit.core.torch_utils import num_threads
from slimkit.core.user_task import Metric, task_from
from slimkit.eval.measure import baseline_bytes
from slimkit.io.artifact import save
from slimkit.io.safetensors_file import atomic_write
from slimkit.zoo.digits_task import DigitsTask
from slimkit.zoo.resolve import resolve


@dataclass
class Progress:
    """What the progress display shows after each candidate."""

    record: TrialRecord
    done: int                      # candidates run by this call
    total: int                     # candidates in the folder
    best: TrialRecord | None
    baseline_bytes: int
    elapsed_s: float
    budget_s: float


def search(model: str | nn.Module, max_drop: float, out: str | Path, budget: str | float | timedelta = "20m",
           max_trials: int | None = None, seed: int = 0, effort: float = 1.0,
           on_trial: Callable[[Progress], None] | None = None,
           certification: Certification | None = None, methods: list[str] | None = None, *,
           data: object = None, metric: Metric | None = None, command: list[str] | None = None) -> SearchResult:
    """Search recipes for `model` (a builtin name like "builtin:lenet-300-100", a HF folder, or a
    model from `sk.zoo.load`); keep the smallest artifact whose held-out score is at most
    `max_drop` points below the original's. Writes best.slim, best.yaml, pareto.json, report.html
    and PNG plots into `out`; calling it again on the same folder resumes.

    `budget` is the time the whole call may take: a duration string (`"90s"`, `"20m"`, `"1h"`, as
    `slimkit search --budget`) or a number of seconds. Certification is planned inside it, and the
    call returns within it (give or take a few percent).

    On builtin digits models a candidate within the budget on validation becomes the best only if
    `certification` (default: 3 x 10-fold cross-validation over the training split, 90% upper
    bound of the drop; see `slimkit.autosearch.certify`) keeps it within the budget too; on other models only if a
    second run with other training seeds does. best.slim is always written: when no candidate could
    be certified in time, it holds the best uncertified one, and `result.certified` is False with
    `result.reason` saying why (`slimkit.autosearch.outcome`).

    `methods` restricts the search to these registered methods, each drawing its own options
    (`MethodConfig.search_choices`); by default builtin models get their curated space.
    `data` / `metric` score a model of your own (`slimkit.core.user_task.task_from`: a DataLoader or
    batches, and `metric(model) -> float`; candidates are chosen on a held-back fifth of the data).
    `command`: how the model (and its data) were named on the command line (e.g. `["model.py:build",
    "--data", "data.py:data"]`), so each front candidate's reproduce line is a `slimkit compress` command.

    >>> r = search("builtin:lenet-300-100", max_drop=0.5, out="runs/s", budget="10m")
    >>> r.best["bytes"], r.best["test_score"], r.certified, r.reason
    """
    plan = TimePlan(parse_duration(budget))      # the clock starts now: everything below is in the budget
    require("optuna", "search", "search")
    _check(max_drop, max_trials, effort)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise SlimError(f"--out {folder} is a file; give a folder")
    if folder.is_dir() and not _fresh(folder) and not (folder / STATE).is_file():
        raise SlimError(f"--out {folder} exists and is not a slimkit search folder; choose another --out")
    state = read_state(folder)
    if state is not None and isinstance(model, str) and state["model"] != model:
        raise SlimError(f"{folder} holds a search of {state['model']}, not {model}; use another --out")
    net, ref, task = _model_and_task(model, data, metric)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRIALS).mkdir(exist_ok=True)
    if state is not None and state["model"] != ref:
        raise SlimError(f"{folder} holds a search of {state['model']}, not {ref}; use another --out")

    work, score, where = validation_setup(task)   # candidates are made with `work`, scored by `score`
    cv = _cross_validation(net, task, certification)
    if cv is not None:
        where = cv.describe()
    if state is None:
        state = _new_state(net, ref, work, score, where, plan.budget_s, methods)
        if command:
            state["command"] = [str(a) for a in command]
    elif state.get("methods") != (None if methods is None else list(methods)):
        raise SlimError(f"{folder} holds a search over methods {state.get('methods') or 'of the curated space'}; "
                        "use another --out to search other methods")
    state["max_drop_pts"], state["budget_s"] = max_drop, plan.budget_s
    prepared = prepare_finish(folder, net, task, state)
    plan.finish_s = prepared.finish_s
    space = _space(net, work, state, effort)
    records = [TrialRecord.from_dict(d) for d in state["trials"]]
    study = _study(space, records, state, max_drop, seed)
    limits = Budget(state["baseline"]["val_score"], max_drop, plan.work_end, abort_drop=max_drop + max(1.0, max_drop))
    certifier = Certifier(net, work, score, limits, cv, plan)
    done, interrupted, threads, running = 0, False, torch.get_num_threads(), 0
    try:
        with num_threads(fair_threads(threads)):
            certifier.certify_open(records)            # a resumed search's candidates still open
        while (max_trials is None or done < max_trials) and certifier.room_for_candidate(records):
            space.time_left = plan.left()
            trial, stages = _ask_new(study, space, records)
            rec = TrialRecord(len(records), dict(trial.params), [stage_dict(c) for c in stages],
                              distributions=_dists(trial.distributions))
            running = fair_threads(threads, running)   # fewer threads while the machine is busy
            rec.threads = running
            try:
                with num_threads(running):
                    run_candidate(net, stages, work, score, limits, folder / TRIALS / f"{rec.number:04d}.slim",
                                  rec)
            except OutOfTime:
                _tell_fail(study, trial)
                break
            plan.add("candidate", rec.seconds)
            records.append(rec)
            with num_threads(running):
                certifier.certify_open(records)
                certifier.prepare_folds(records)
            _tell(study, trial, rec, state["baseline"]["bytes"], max_drop)
            done += 1
            _persist(folder, net, state, records, max_drop)
            _step_from_best(study, records, max_drop, seed)
            if on_trial is not None:
                on_trial(Progress(rec, done, len(records), best_record(records, max_drop), state["baseline"]["bytes"],
                                  plan.elapsed(), plan.budget_s))
    except KeyboardInterrupt:
        interrupted = True
    state["elapsed_s"] = round(state.get("elapsed_s", 0.0) + plan.elapsed(), 1)
    _persist(folder, net, state, records, max_drop)
    return finish(folder, net, task, state, records, interrupted, plan, prepared)


def _fresh(folder: Path) -> bool:
    """True if `folder` is empty, or holds only the empty trials/ folder a failed first call left."""
    return all(p.name == TRIALS and p.is_dir() and not any(p.iterdir()) for p in folder.iterdir())


def _check(max_drop: float, max_trials: int | None, effort: float) -> None:
    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if not number(max_drop) or max_drop < 0:
        raise SlimError(f"max_drop (--max-drop) must be a number of points >= 0, got {max_drop!r}")
    if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int)
                                   or max_trials < 1):
        raise SlimError(f"max_trials (--trials) must be a positive integer, got {max_trials!r}")
    if not number(effort) or not 0 < effort <= 10:
        raise SlimError(f"effort (--effort) must be in (0, 10], got {effort!r}")


def _model_and_task(model: str | nn.Module, data: object = None, metric: Metric | None = None):
    if isinstance(model, str):
        ref, net = model, resolve(model)
    elif isinstance(model, nn.Module):
        net = model
        base = base_of(net)
        ref = f"builtin:{base['name']}" if base.get("kind") == "zoo" else json.dumps(base, sort_keys=True)
    else:
        raise SlimError(f"search needs a model reference or an nn.Module, got {type(model).__name__}")
    task = task_from(data, metric, net) or task_for(net)
    if task is None:
        raise SlimError(f"search needs data to score candidates: {ref} is not a builtin model or a HF folder "
                        "(pass data= and metric=)")
    if callable(getattr(task, "reference", None)):   # fidelity tasks: the loaded original, not a second load
        task.reference = lambda: net
    return net.eval(), ref, task


def _new_state(net: nn.Module, ref: str, task, score, where: str, budget_s: float,
               methods: list[str] | None = None) -> dict:
    t = time.monotonic()
    val = score(net)
    score_s = time.monotonic() - t
    t = time.monotonic()
    base = {"bytes": baseline_bytes(net), "val_score": round(val, 6), "latency_ms": quick_latency(net, task)}
    latency_s = time.monotonic() - t
    space = space_for(net, task, methods=methods)
    layers, probes = space.layers(), space.probes()
    cost = len(layers) * len(probes) * score_s
    rows: list[dict] = []
    note = ""
    if layers and probes and cost <= 0.1 * budget_s:
        rows = layer_sensitivity(net, task, score, probes, layers, time_cap=0.1 * budget_s)
        if len(rows) < len(layers) * len(probes):
            note = f"stopped after {len(rows)} of {len(layers) * len(probes)} probes, at 10% of the time budget"
    elif layers and probes:
        note = f"skipped: ~{cost:.0f} s, more than 10% of the time budget"
    return {"version": VERSION, "model": ref, "task": task.name, "score_name": task.score_name,
            "score_s": round(score_s, 3), "latency_s": round(latency_s, 3),
            "validation": where, "space": space.name, "baseline": base, "sensitivity": rows,
            "sensitivity_note": note, "protect_order": protect_order(rows) if rows else [],
            "trials": [], "best": None, "elapsed_s": 0.0, "methods": None if methods is None else list(methods)}


def space_for(model: nn.Module, task: Task, protect_order: list[str] | None = None, effort: float = 1.0,
              score_s: float | None = None, methods: list[str] | None = None) -> Space:
    """The search space for `model` scored by `task`: the registered methods' own entries when
    `methods` names some (or the task has no curated space), else the curated space of digits
    classifiers or sentence encoders. `effort` scales the training epochs of the digits space (0.1:
    ten times fewer); `score_s`, the seconds one held-out scoring took, sizes the training stages
    of the encoder space."""
    if methods is not None:
        return RegisteredSpace(model, task, methods)
    if isinstance(task, DigitsTask):
        return DigitsSpace(model, protect_order, effort)
    if hasattr(task, "calib_sentences") and hasattr(task, "encode"):
        return EmbeddingSpace(model, len(task.calib_sentences), score_s)
    return RegisteredSpace(model, task)


def _space(net: nn.Module, task, state: dict, effort: float):
    return space_for(net, task, state.get("protect_order", []), effort, score_s=state.get("score_s"),
                     methods=state.get("methods"))


def _study(space, records: list[TrialRecord], state: dict, max_drop: float, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.TPESampler(seed=seed + len(records), multivariate=True, group=True,
                                             n_startup_trials=8)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for rec in records:
        if rec.distributions:
            dists = {k: optuna.distributions.json_to_distribution(v) for k, v in rec.distributions.items()}
            value, violation = _objective(rec, state["baseline"]["bytes"], max_drop)
            study.add_trial(optuna.trial.create_trial(params=rec.params, distributions=dists, value=value,
                                                      constraints={"drop": violation}))
    tried = [r.params for r in records]
    for params in space.seeds():
        if not any(all(p.get(k) == v for k, v in params.items()) for p in tried):
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def _ask_new(study, space, records: list[TrialRecord], tries: int = 5):
    """(trial, stages) for a candidate not measured before: a repeat is dropped (told as failed,
    which the sampler ignores) and asked again; after `tries` repeats one candidate is drawn at random."""
    import optuna

    seen = [r.params for r in records]
    for attempt in range(tries + 1):
        if attempt == tries:
            sampler, study.sampler = study.sampler, optuna.samplers.RandomSampler(seed=len(records))
        try:
            trial = study.ask()
            stages = space.suggest(trial)
        finally:
            if attempt == tries:
                study.sampler = sampler
        if trial.params not in seen or attempt == tries:
            return trial, stages
        _tell_fail(study, trial)
    raise AssertionError("unreachable")


def _cross_validation(net: nn.Module, task, certification: Certification | None):
    """The cross-validation that certifies candidates (builtin digits models), else None."""

    if not isinstance(task, DigitsTask):
        return None
    return CrossValidation.for_model(net, certification or Certification())


def _step_from_best(study, records: list[TrialRecord], max_drop: float, seed: int) -> None:
    """Every other candidate (once the seeds are done) is a local step from the best so far."""

    import optuna

    best = best_record(records, max_drop)
    if best is None or len(records) % 2 or study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        return
    dists = {k: optuna.distributions.json_to_distribution(v) for k, v in best.distributions.items()}
    study.enqueue_trial(mutate(best.params, dists, random.Random(seed * 7919 + len(records))))


def _dists(distributions: dict) -> dict:
    import optuna

    return {k: optuna.distributions.distribution_to_json(d) for k, d in distributions.items()}


def _objective(rec: TrialRecord, baseline_bytes: int, max_drop: float) -> tuple[float, float]:
    """(log10 bytes, constraint violation in points: <= 0 is within the budget) as the sampler sees
    a candidate (the worse of its two runs if it was confirmed). Stopped or failed candidates count
    as uncompressed and far outside the budget."""
    if rec.measured:
        return math.log10(max(1, rec.bytes)), rec.worst_drop() - max_drop
    violation = rec.drop_pts - max_drop if rec.drop_pts is not None else 100.0
    return math.log10(max(1, baseline_bytes)), max(violation, 1.0)


def _tell(study, trial, rec: TrialRecord, baseline_bytes: int, max_drop: float) -> None:
    value, violation = _objective(rec, baseline_bytes, max_drop)
    trial.set_constraint("drop", violation)
    study.tell(trial, value)


def _tell_fail(study, trial) -> None:
    import optuna

    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _persist(folder: Path, net: nn.Module, state: dict, records: list[TrialRecord], max_drop: float) -> None:
    """Write best.slim when what it should hold changed (see `outcome.choose`: always something),
    drop artifacts no front needs, rewrite search.json and pareto.json (each write atomic: an
    interruption leaves the old file or the new one)."""

    base_bytes = state["baseline"]["bytes"]
    outcome = choose(records, max_drop)
    held = "original" if outcome.record is None else outcome.record.number
    if state.get("best_slim") != held or not (folder / BEST).is_file():
        if outcome.record is None:
            save(net, folder / BEST, info={"search_trial": None})
        else:
            atomic_write(folder / BEST, [(folder / outcome.record.path).read_bytes()])
        state["best_slim"] = held
    best = best_record(records, max_drop)
    state["best"] = None if best is None else best.number
    state["outcome"] = outcome.to_dict()
    pts = points(records, base_bytes, max_drop)
    keep = {p["trial"] for p in front(pts, "bytes")} | {p["trial"] for p in front(pts, "latency_ms")}
    keep |= {r.number for r in (best, outcome.record) if r is not None}
    for r in records:
        if r.path and r.number not in keep:
            (folder / r.path).unlink(missing_ok=True)
            r.path = None
    state["trials"] = [r.to_dict() for r in records]
    write_json(folder / STATE, state, indent=None)   # rewritten after every candidate: kept compact
    write_json(folder / PARETO, pareto_doc(state, points(records, base_bytes, max_drop), best))
