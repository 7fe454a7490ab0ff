"""The demo: one representative method per family plus a combined pipeline on lenet-300-100.

Each row is really saved to a .slim file and measured from that file. A family whose method is
not built yet is shown as "not yet implemented", never with an invented number.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slimkit import zoo
from slimkit.core.errors import SlimError
from slimkit.eval.measure import evaluate
from slimkit.io.artifact import load, save
from slimkit.io.safetensors_file import atomic_write
from slimkit.pipeline.recipes import load_recipe, run_recipe

PLAN: list[tuple[str, str]] = [
    ("quantization", "int8"),
    ("pruning", "prune-magnitude"),
    ("parameter sharing", "kmeans"),
    ("distillation", "distill-mlp"),
    ("combined", "deep-compression"),
]


@dataclass
class Row:
    family: str
    method: str
    bytes: int | None = None
    ratio: float | None = None
    score: float | None = None
    delta_pt: float | None = None
    latency_b1_ms: float | None = None
    latency_b32_ms: float | None = None
    note: str = ""


def run_demo(out_dir: str | Path = "slimkit-demo", model_name: str = "lenet-300-100",
             progress: Callable[[str], None] = lambda msg: None) -> list[Row]:
    """Run every row, save artifacts and the table (markdown + JSON) into `out_dir`."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"loading builtin:{model_name} (trained on first use)")
    base = zoo.load(model_name)
    task = zoo.entry(model_name).task()
    path = out / "baseline.slim"
    save(base, path)
    ref = evaluate(load(path), task, path=path)  # run as the compressed rows run: same runtime
    rows = [Row("baseline", "fp32", ref.bytes, round(ref.ratio, 2), ref.score, 0.0,
                ref.latency_ms["batch1"], ref.latency_ms["batch32"])]
    for family, recipe_name in PLAN:
        try:
            recipe = load_recipe(recipe_name)
        except SlimError:
            rows.append(Row(family, recipe_name, note="not yet implemented"))
            continue
        progress(f"{family}: {recipe_name}")
        model = run_recipe(zoo.load(model_name), recipe, task)
        path = out / f"{recipe_name}.slim"
        save(model, path, info={"recipe": recipe_name})
        m = evaluate(load(path), task, path=path)
        rows.append(Row(family, recipe_name, m.bytes, round(m.ratio, 2), m.score,
                        round((m.score - ref.score) * 100, 2), m.latency_ms["batch1"],
                        m.latency_ms["batch32"]))
    write_tables(rows, out, model_name)
    return rows


def write_tables(rows: list[Row], out: Path, model_name: str) -> None:
    lines = [f"# slimkit demo on {model_name}", "",
             "ratio = the model's fp32 safetensors size / this .slim file's size", "",
             "| family | method | bytes | ratio | accuracy | change (pt) | ms batch 1 | ms batch 32 | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.family, r.method, r.bytes, r.ratio and f"{r.ratio}x", r.score, r.delta_pt,
                 r.latency_b1_ms, r.latency_b32_ms, r.note]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    atomic_write(out / "results.md", ["\n".join(lines).encode() + b"\n"])
    atomic_write(out / "results.json", [json.dumps([r.__dict__ for r in rows], indent=1).encode()])
