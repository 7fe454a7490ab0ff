"""The end of a search: best.slim measured on the test data, best.yaml, each front candidate's
recipe and the command that reproduces it, the final pareto.json and search.json, and the report
with its plots.

>>> result = finish(folder, model, task, state, records, interrupted=False, plan=plan)
>>> result.certified, result.reason
(True, None)
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from slimkit.autosearch.budget import TimePlan
from slimkit.autosearch.outcome import choose
from slimkit.autosearch.pareto import BEST, PARETO, STATE, TRIALS, front, pareto_doc, points, write_json
from slimkit.autosearch.plots import plot_pareto
from slimkit.autosearch.report import apoz_rows, write_report
from slimkit.autosearch.trial import TrialRecord, quick_latency
from slimkit.core.optional import pyplot
from slimkit.eval.measure import evaluate
from slimkit.io.artifact import load
from slimkit.io.safetensors_file import atomic_write
from slimkit.pipeline.recipe_yaml import dump_yaml


@dataclass
class SearchResult:
    """What `slimkit.autosearch.search` returns: best.slim's measurements (on the test data) and
    standing, the front, every candidate and the report.

    `best` is always set once a search has run (best.slim is always written); `certified` says
    whether it was certified, and `reason`, when it was not, why."""

    folder: Path
    best: dict | None
    front: list[dict]
    trials: list[TrialRecord]
    baseline: dict
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    report: Path | None = None
    certified: bool = False
    reason: str | None = None


def finish(folder: Path, net: nn.Module, task, state: dict, records: list[TrialRecord],
           interrupted: bool, plan: TimePlan | None = None, prepared: Prepared | None = None) -> SearchResult:
    """Measure best.slim on test data, write best.yaml, the front's recipes, pareto.json,
    search.json and report.html (optional plots only while `plan` has time left); the result."""

    start = time.monotonic()
    max_drop = state["max_drop_pts"]
    base = state["baseline"]
    pts = points(records, base["bytes"], max_drop)
    outcome = choose(records, max_drop)
    if "test_score" not in base:
        base["test_score"] = round(float(task.score(net)), 6)
    best_model = load(folder / BEST, runtime="torch")   # measured as candidates were: no runtime choice
    m = evaluate(best_model, task, path=folder / BEST, timing=False)
    m.latency_ms = quick_latency(best_model, task)
    if outcome.record is not None:
        row = next(p for p in pts if p["trial"] == outcome.record.number)
    else:
        row = {"trial": None, "stages": [], "val_score": base["val_score"], "drop_pts": 0.0}
    final = {**row, "path": BEST, "bytes": m.bytes, "ratio": round(m.ratio, 2), "test_score": m.score,
             "test_drop_pts": round((base["test_score"] - m.score) * 100, 4) if m.score is not None else None,
             "baseline_test_score": base["test_score"], "latency_ms": m.latency_ms.get("batch1"),
             "latency_batched_ms": m.latency_ms.get("batch32"), "certified": outcome.certified,
             "within_budget": outcome.within_budget, "reason": outcome.reason}
    notes = []
    if outcome.record is not None:
        _write_recipe(folder / "best.yaml", state, final["stages"], _describe(state, final))
    else:
        (folder / "best.yaml").unlink(missing_ok=True)
    if not outcome.certified:
        notes.append(f"best.slim is not certified: {outcome.reason}")
    if interrupted:
        notes.append("interrupted: run the same command again to resume")
    for p in front(pts, "bytes") + front(pts, "latency_ms"):
        _reproducible(folder, state, p)
    state["final"] = final
    write_json(folder / PARETO, pareto_doc(state, pts, None, final))

    deadline = None if plan is None else plan.end
    report, report_notes = write_report(folder, net, best_model, task, state, pts, final, deadline=deadline,
                                        original_apoz=None if prepared is None else prepared.original_apoz)
    state["finish_s"] = round(time.monotonic() - start, 3)
    write_json(folder / STATE, state, indent=None)
    return SearchResult(folder=folder, best=final, front=front(pts, "bytes"), trials=records, baseline=base,
                        interrupted=interrupted, notes=notes + report_notes, report=report,
                        certified=outcome.certified, reason=outcome.reason)


@dataclass
class Prepared:
    """What finishing needs from the original, measured when the search starts: the seconds to
    reserve for finishing and the original's APoZ rows (drawn in the report)."""

    finish_s: float
    original_apoz: list[dict] | None = None


def prepare_finish(folder: Path, net: nn.Module, task, state: dict) -> Prepared:
    """Time, on this machine and under its current load, what finishing will do once more for
    best.slim: the test score (the original's is kept: it chooses nothing), its latency (timed when
    the search began), its APoZ rows (the original's are kept for the report) and a plot (a first
    Pareto plot, drawn into the folder and redrawn at the end; finishing draws four). The reserve
    is a quarter more than that, and at least what the last call's finishing took."""
    base = state["baseline"]
    t = time.monotonic()
    if "test_score" not in base:
        base["test_score"] = round(float(task.score(net)), 6)
    test_s = time.monotonic() - t
    t = time.monotonic()
    apoz = apoz_rows(net, task)
    apoz_s = time.monotonic() - t
    try:
        pyplot()                      # imported once, now: finishing does not pay for it again
        t = time.monotonic()
        plot_pareto(points([TrialRecord.from_dict(d) for d in state["trials"]], base["bytes"], state["max_drop_pts"]),
                    base, state["max_drop_pts"], None, folder / "pareto.png", state["score_name"])
        plot_s = time.monotonic() - t
    except Exception:   # plots are optional (the plots extra): finishing then draws none either
        plot_s = 0.0
    estimate = 1.25 * (test_s + state.get("latency_s", 1.0) + apoz_s + 4 * plot_s)
    return Prepared(max(estimate, state.get("finish_s", 0.0)), apoz)


def reproduce_command(model: str | list[str], recipe: Path, out: Path) -> str:
    """The shell command (or, for a module given in Python, the Python line) that reruns `recipe`.
    `model` is the reference, or the command line's model arguments (`["m.py:build", "--data", "d.py:data"]`)."""
    args = [model] if isinstance(model, str) else list(model)
    if args[0].startswith("{"):
        return (f"sk.save(sk.run_recipe(model, sk.load_recipe({str(recipe)!r}), data=data, metric=metric), "
                f"{str(out)!r})")
    named = " ".join(shlex.quote(a) for a in args)
    return f"slimkit compress {named} --recipe {shlex.quote(str(recipe))} --out {shlex.quote(str(out))}"


def _reproducible(folder: Path, state: dict, point: dict) -> None:
    """Write a front point's exact recipe beside its artifact; add both paths and the command to it."""
    if "command" in point:
        return
    n = point["trial"]
    recipe = folder / TRIALS / f"{n:04d}.yaml"
    _write_recipe(recipe, state, point["stages"], f"trial {n} of slimkit search for {state['model']}: "
                                                  f"{point['ratio']}x, validation {-point['drop_pts']:+.2f} pt")
    point["recipe"] = str(recipe)
    point["file"] = str(folder / point["path"]) if point.get("path") else None
    point["command"] = reproduce_command(state.get("command") or state["model"], recipe, folder / f"rerun-{n:04d}.slim")


def _describe(state: dict, final: dict) -> str:
    test = final["test_drop_pts"]
    standing = "certified" if final["certified"] else "NOT certified"
    return (f"found by slimkit search for {state['model']}: {final['ratio']}x smaller, validation "
            f"{state['score_name']} {-final['drop_pts']:+.2f} pt, test {'-' if test is None else f'{-test:+.2f}'} pt, "
            f"{standing}")


def _write_recipe(path: Path, state: dict, stages: list[dict], description: str) -> None:
    """`stages` as a recipe `slimkit compress --recipe` can rerun."""
    doc = {"description": description, "stages": stages}
    if state["model"].startswith("builtin:"):
        doc["models"] = [state["model"].removeprefix("builtin:")]
    atomic_write(path, [dump_yaml(doc).encode()])
