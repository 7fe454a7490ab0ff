"""The end of a search: the best artifact measured on the test data, best.yaml, the final
pareto.json and the report with its plots.

>>> result = finish(folder, model, task, state, records, interrupted=False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from slimkit.autosearch.pareto import BEST, PARETO, best_record, front, pareto_doc, points, write_json
from slimkit.autosearch.report import write_report
from slimkit.autosearch.trial import TrialRecord, quick_latency
from slimkit.eval.measure import evaluate
from slimkit.io.artifact import load
from slimkit.io.safetensors_file import atomic_write
from slimkit.pipeline.recipe_yaml import dump_yaml


@dataclass
class SearchResult:
    """What `slimkit.autosearch.search` returns: the best (measured on the test data), the front,
    every candidate and the report."""

    folder: Path
    best: dict | None              # the best candidate with its test measurements, None if none fits
    front: list[dict]
    trials: list[TrialRecord]
    baseline: dict
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    report: Path | None = None


def finish(folder: Path, net: nn.Module, task, state: dict, records: list[TrialRecord],
           interrupted: bool) -> SearchResult:
    """Measure the best on test data, write best.yaml, pareto.json and report.html; the result."""

    max_drop = state["max_drop_pts"]
    base = state["baseline"]
    pts = points(records, base["bytes"], max_drop)
    best = best_record(records, max_drop)
    if "test_score" not in base:
        base["test_score"] = round(float(task.score(net)), 6)
    final, best_model, notes = None, None, []
    if best is not None and (folder / BEST).is_file():
        best_model = load(folder / BEST)
        m = evaluate(best_model, task, path=folder / BEST, timing=False)
        m.latency_ms = quick_latency(best_model, task)
        final = {**next(p for p in pts if p["trial"] == best.number), "path": BEST, "bytes": m.bytes,
                 "ratio": round(m.ratio, 2), "test_score": m.score,
                 "test_drop_pts": round((base["test_score"] - m.score) * 100, 4) if m.score is not None else None,
                 "baseline_test_score": base["test_score"], "latency_ms": m.latency_ms.get("batch1"),
                 "latency_batched_ms": m.latency_ms.get("batch32")}
        _write_recipe(folder / "best.yaml", state, best, final)
    elif not pts:
        notes.append("no candidate finished within the time budget; best.slim was not written (give a longer "
                     "--budget, or run the same command again to continue)")
    elif any(r.certificate is not None for r in records):
        tried = min((r for r in records if r.certificate is not None and r.certificate.get("ucb_pts") is not None),
                    key=lambda r: r.certificate["ucb_pts"])
        notes.append(f"no candidate was certified: the lowest cross-validated upper bound was "
                     f"{tried.certificate['ucb_pts']:.2f} pt (trial {tried.number}), above the budget of "
                     f"{max_drop:g}; best.slim was not written (give a longer --budget, a lower --confidence, "
                     "or a larger --max-drop)")
    else:
        notes.append(f"no candidate kept the validation {state['score_name']} within {max_drop:g} points "
                     "of the original; best.slim was not written")
    if interrupted:
        notes.append("interrupted: run the same command again to resume")
    state["final"] = final
    write_json(folder / PARETO, pareto_doc(state, pts, best if final else None, final))

    report, report_notes = write_report(folder, net, best_model, task, state, pts, final)
    return SearchResult(folder=folder, best=final, front=_front(pts), trials=records,
                        baseline=base, interrupted=interrupted, notes=notes + report_notes,
                        report=report)


def _front(pts: list[dict]) -> list[dict]:
    return front(pts, "bytes")


def _write_recipe(path: Path, state: dict, best: TrialRecord, final: dict) -> None:
    """The best candidate as a recipe `slimkit compress --recipe best.yaml` can rerun."""

    name = state["model"].removeprefix("builtin:")
    test = final["test_drop_pts"]
    doc = {"description": f"found by slimkit search for {state['model']}: {final['ratio']}x smaller, "
                          f"validation {state['score_name']} {-final['drop_pts']:+.2f} pt, "
                          f"test {'-' if test is None else f'{-test:+.2f}'} pt",
           "stages": best.stages}
    if state["model"].startswith("builtin:"):
        doc["models"] = [name]
    atomic_write(path, [dump_yaml(doc).encode()])
