"""Pareto fronts over measured candidates and the search folder's JSON files, written atomically.

>>> front([{"bytes": 4000, "val_score": 0.98}, {"bytes": 5000, "val_score": 0.97}], "bytes")
[{'bytes': 4000, 'val_score': 0.98}]
"""

from __future__ import annotations

import json
from pathlib import Path

from slimkit.core.errors import SlimError

STATE = "search.json"
PARETO = "pareto.json"
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
    from slimkit.io.safetensors_file import atomic_write

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
