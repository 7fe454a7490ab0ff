"""A full pass's slimkit artifacts, kept so that a later `--speed-only` pass (in `make bench`, the
one with SLIMKIT_COMPUTE_DTYPE=float32) times the very same .slim files on another path instead
of compressing again.

`keep` copies a case's seed-0 .slim files into `folder/<case>/` with a `manifest.json` listing
every recipe row (also those that failed, timed out or were skipped, with why); `reload` loads
them back with `slimkit.load`, scores them again on this process's path and returns candidates.

>>> keep("lenet5", cands, Path("bench/out/artifacts"), {"command": "python -m bench --artifacts"})
>>> cands, about = reload("lenet5", Path("bench/out/artifacts"), task)   # None when nothing was kept
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from bench.harness import NOT_IMPLEMENTED, Candidate

MANIFEST = "manifest.json"


def keep(case: str, cands: list[Candidate], folder: Path, about: dict) -> Path:
    """Copy the slimkit candidates' files to `folder/case/` (replacing an earlier pass's) and write
    the manifest (`about`, e.g. the command, plus the date); returns the case's folder."""
    dest = Path(folder) / case
    dest.mkdir(parents=True, exist_ok=True)
    for old in (*dest.glob("*.slim"), dest / MANIFEST):
        old.unlink(missing_ok=True)
    rows = []
    for c in cands:
        if c.kind != "slimkit":
            continue
        entry = {"name": c.name, "status": c.status, "note": c.note, "compress_s": c.compress_s,
                 "file": None}
        if c.ok and c.file:
            entry["file"] = Path(c.file).name
            shutil.copyfile(c.file, dest / entry["file"])
        rows.append(entry)
    about = {**about, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    (dest / MANIFEST).write_text(json.dumps({"case": case, "about": about, "rows": rows}, indent=1) + "\n")
    return dest


def reload(case: str, folder: Path, task: Any) -> tuple[list[Candidate], dict] | None:
    """The kept artifacts of `case` as scored candidates, and the manifest's `about`; None when
    `folder` holds no manifest for the case."""
    dest = Path(folder) / case
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    out = []
    for entry in manifest.get("rows", []):
        if not entry.get("file"):
            status, note = entry["status"], entry["note"]
            if status not in ("not applicable", NOT_IMPLEMENTED):
                note = f"{note} (in the pass that kept the artifacts)".lstrip()
            out.append(Candidate(entry["name"], "slimkit", status=status, note=note))
            continue
        out.append(_load(entry, dest / entry["file"], task))
    return out, manifest.get("about", {})


def _load(entry: dict, path: Path, task: Any) -> Candidate:
    import torch

    import slimkit as sk
    from slimkit.eval.measure import count_params

    try:
        model = sk.load(path).eval()
        with torch.inference_mode():
            score = float(task.score(model))
        params, nonzeros = count_params(model)
    except Exception as exc:  # noqa: BLE001 - a file that no longer loads is a result to report
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Candidate(entry["name"], "slimkit", status="failed", note=f"{type(exc).__name__}: {first}")
    return Candidate(entry["name"], "slimkit", model=model, file=str(path), bytes=path.stat().st_size,
                     score=score, params=params, nonzeros=nonzeros, compress_s=entry.get("compress_s"))
