"""Pareto fronts over measured candidates, the best of them, and the search folder's JSON files,
written atomically.

>>> front([{"bytes": 4000, "val_score": 0.98}, {"bytes": 5000, "val_score": 0.97}], "bytes")
[{'bytes': 4000, 'val_score': 0.98}]
"""

from __future__ import annotations

import json
from pathlib import Path

from slimkit.autosearch.trial import TrialRecord
from slimkit.core.errors import SlimError
from slimkit.io.safetensors_file import atomic_write

BEST = "best.slim"
STATE = "search.json"
PARETO = "pareto.json"
TRIALS = "trials"            # the candidates' artifacts (those on a front) and recipes
VERSION = 1


def front(points: list[dict], cost: str, score: str = "val_score") -> list[dict]:
    """The points no other point beats on both `cost` (lower is better) and `score` (higher is
    better), sorted by cost. Of identical points the first is kept."""
    usable = [p for p in points if p.get(cost) is not None and p.get(score) is not None]
    ordered = sorted(usable, key=lambda p: (p[cost], -p[score]))
    out: list[dict] = []
    for p in ordered:
        if not out or p[score] > out[-1][score]:
            out.append(p)
    return out


def dominated(p: dict, q: dict, cost: str, score: str = "val_score") -> bool:
    """True if `q` is at least as good as `p` on both axes and better on one."""
    return (q[cost] <= p[cost] and q[score] >= p[score]) and (q[cost] < p[cost] or q[score] > p[score])


def write_json(path: Path, obj: dict, indent: int | None = 1) -> None:
    """Write `obj` as JSON via a temporary file and a rename (never a half-written file)."""
    atomic_write(path, [json.dumps(obj, indent=indent).encode()])


def read_state(folder: Path) -> dict | None:
    """The saved state of a search in `folder`, or None if there is none."""
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlimError(f"{path}: cannot read the saved search ({exc}); use another --out") from None
    if not isinstance(state, dict) or state.get("version") != VERSION or not isinstance(state.get("trials"), list):
        raise SlimError(f"{path}: not a slimkit search state (version {VERSION}); use another --out")
    return state


def best_record(records: list[TrialRecord], max_drop: float) -> TrialRecord | None:
    """The smallest confirmed candidate (see `TrialRecord.confirmed`), or None."""
    fits = [r for r in records if r.confirmed(max_drop)]
    return min(fits, key=lambda r: (r.bytes, -r.val_score, r.number)) if fits else None


def points(records: list[TrialRecord], baseline_bytes: int, max_drop: float) -> list[dict]:
    """Measured candidates as plain dicts (what pareto.json and the plots show)."""
    out = []
    for r in records:
        if r.measured:
            out.append({"trial": r.number, "bytes": r.bytes, "ratio": round(baseline_bytes / r.bytes, 2),
                        "val_score": r.val_score, "drop_pts": r.drop_pts,
                        "latency_ms": r.latency_ms.get("batch1"), "latency_batched_ms": r.latency_ms.get("batch32"),
                        "within_budget": r.feasible(max_drop) or r.confirmed(max_drop),
                        "confirm_drop_pts": r.confirm_drop_pts,
                        "cv_drop_pts": (r.certificate or {}).get("drop_pts"),
                        "cv_ucb_pts": (r.certificate or {}).get("ucb_pts"),
                        "confirmed": r.confirmed(max_drop), "stages": r.stages, "path": r.path})
    return out


def pareto_doc(state: dict, pts: list[dict], best: TrialRecord | None, final: dict | None = None) -> dict:
    """The content of pareto.json."""
    return {"model": state["model"], "score_name": state["score_name"], "chosen_on": state["validation"],
            "max_drop_pts": state["max_drop_pts"], "baseline": state["baseline"],
            "best": final if final is not None else (None if best is None else
                                                     next(p for p in pts if p["trial"] == best.number)),
            "front": front(pts, "bytes"), "latency_front": front(pts, "latency_ms"),
            "candidates": len(state["trials"]), "elapsed_s": state.get("elapsed_s", 0.0)}
