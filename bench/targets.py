"""The targets the issues set for `make bench`, checked against a case's measured rows.

Each target names a row (a recipe or peer), a measured quantity and a bound. A target whose row
was not measured reads "not measured" (never met, never failed). Accuracy drops use the mean
over seeds against the same-seed fp32 baseline when several seeds were run.

>>> check(case)          # -> [{"target": ..., "value": ..., "verdict": "met" | "missed" | ...}]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import BASELINE

ORT_INT8 = "onnxruntime int8 (per-channel)"


@dataclass(frozen=True)
class Target:
    case: str
    row: str
    text: str
    measure: Callable[[dict, dict], float | None]   # (row, all rows by name) -> value
    ok: Callable[[float], bool]
    fmt: str = "{:.4g}"
    source: str = ""


def _get(key: str) -> Callable[[dict, dict], float | None]:
    return lambda row, rows: row.get(key)


def _mb(row: dict, rows: dict) -> float | None:
    return row["bytes"] / 1e6 if row.get("bytes") else None


def _change_pt(row: dict, rows: dict) -> float | None:
    change = row.get("score_change_mean", row.get("score_change"))
    return None if change is None else change * 100


def _ratio_of(key: str) -> Callable[[dict, dict], float | None]:
    """torch fp32's `key` divided by the row's (e.g. how many times fewer parameters)."""
    def measure(row: dict, rows: dict) -> float | None:
        base = rows.get(BASELINE) or {}
        if not row.get(key) or not base.get(key):
            return None
        return base[key] / row[key]
    return measure


def _ms_vs(peer: str, key: str = "ms_batched") -> Callable[[dict, dict], float | None]:
    """The row's latency divided by a peer's in the same run."""
    def measure(row: dict, rows: dict) -> float | None:
        other = rows.get(peer) or {}
        if not other.get(key) or not row.get(key):
            return None
        return row[key] / other[key]
    return measure


TARGETS: list[Target] = [
    # issue 3: quantization
    Target("minilm", "int8", "fidelity >= 0.995", _get("score"), lambda v: v >= 0.995, "{:.5f}", "#3"),
    Target("minilm", "int8", "file <= 23.5 MB", _mb,
           lambda v: v <= 23.5, "{:.2f} MB", "#3"),
    Target("minilm", "int8", "batched latency <= ONNX Runtime int8 (same run)", _ms_vs(ORT_INT8),
           lambda v: v <= 1.0, "{:.2f}x of ORT", "#3"),
    Target("minilm", "int8", "time to quantize <= 10 s", _get("compress_s"), lambda v: v <= 10, "{:.1f} s",
           "#3"),
    Target("minilm", "int4", "fidelity >= 0.98", _get("score"), lambda v: v >= 0.98, "{:.5f}", "#3"),
    Target("minilm", "int4", "file <= 13.5 MB", _mb,
           lambda v: v <= 13.5, "{:.2f} MB", "#3"),
    Target("minilm", "int4", "time to quantize <= 60 s", _get("compress_s"), lambda v: v <= 60, "{:.1f} s",
           "#3"),
    Target("minilm", "int4", "batched latency <= 1.5x torch fp32", _ms_vs(BASELINE), lambda v: v <= 1.5,
           "{:.2f}x of fp32", "#3"),
    Target("lenet-300-100", "int8", "accuracy drop <= 0.3 pt", _change_pt, lambda v: v >= -0.3,
           "{:+.2f} pt", "#3"),
    Target("lenet5", "int8", "accuracy drop <= 0.3 pt", _change_pt, lambda v: v >= -0.3, "{:+.2f} pt", "#3"),
    Target("lenet-300-100", "qat-int4", "accuracy drop <= 0.5 pt", _change_pt, lambda v: v >= -0.5,
           "{:+.2f} pt", "#3"),
    Target("lenet5", "qat-int4", "accuracy drop <= 0.5 pt", _change_pt, lambda v: v >= -0.5, "{:+.2f} pt",
           "#3"),
    # issue 4: pruning
    Target("lenet-300-100", "prune-magnitude", ">= 12x fewer nonzero weights", _ratio_of("nonzeros"),
           lambda v: v >= 12, "{:.1f}x", "#4"),
    Target("lenet-300-100", "prune-magnitude", "file >= 10x smaller than fp32", _get("ratio"),
           lambda v: v >= 10, "{:.1f}x", "#4"),
    Target("lenet-300-100", "prune-magnitude", "accuracy drop <= 0.3 pt", _change_pt, lambda v: v >= -0.3,
           "{:+.2f} pt", "#4"),
    Target("lenet5", "apoz", ">= 3.8x fewer parameters", _ratio_of("params"), lambda v: v >= 3.8, "{:.2f}x",
           "#4"),
    Target("lenet5", "apoz", "accuracy drop <= 0.5 pt", _change_pt, lambda v: v >= -0.5, "{:+.2f} pt", "#4"),
    Target("lenet5", "apoz", "batch-1 latency below the unpruned model", _ms_vs(BASELINE, "ms_b1"),
           lambda v: v < 1.0, "{:.2f}x of fp32", "#4"),
    Target("lenet5", "apoz", "batched latency below the unpruned model", _ms_vs(BASELINE),
           lambda v: v < 1.0, "{:.2f}x of fp32", "#4"),
    Target("minilm", "prune-structured", "speed-up >= 1.3x over the unpruned model", _get("speedup_batched"),
           lambda v: v >= 1.3, "{:.2f}x", "#4"),
    # issue 5: parameter sharing
    Target("lenet-300-100", "deep-compression", "file >= 50x smaller than fp32", _get("ratio"),
           lambda v: v >= 50, "{:.1f}x", "#5"),
    Target("lenet-300-100", "deep-compression", "accuracy drop <= 0.5 pt", _change_pt, lambda v: v >= -0.5,
           "{:+.2f} pt", "#5"),
    Target("lenet-300-100", "hashed", "accuracy drop <= 0.5 pt", _change_pt, lambda v: v >= -0.5,
           "{:+.2f} pt", "#5"),
    Target("lenet-300-100", "lowrank", "accuracy drop <= 1 pt", _change_pt, lambda v: v >= -1.0,
           "{:+.2f} pt", "#5"),
]


def check(case: dict) -> list[dict]:
    """Every target of this case with its measured value and a verdict."""
    rows = {r["name"]: r for r in case["rows"]}
    out = []
    for t in TARGETS:
        if t.case != case["case"]:
            continue
        row = rows.get(t.row)
        value = None
        if row is not None and row.get("status") == "ok":
            value = t.measure(row, rows)
        verdict = ("not measured" if value is None else "met" if t.ok(value) else "missed")
        if row is not None and row.get("status") != "ok":
            verdict = f"not measured ({row['status']})"
        shown = None if value is None else t.fmt.format(value)
        if shown is not None and t.measure is _change_pt and row.get("seeds_done", 1) > 1:
            shown += f" (mean of {row['seeds_done']} seeds)"
        out.append({"row": t.row, "target": t.text, "issue": t.source, "value": shown,
                    "verdict": verdict})
    return out


def targets_markdown(case: dict) -> str:
    found = check(case)
    if not found:
        return ""
    lines = ["", f"Targets ({case['case']}):", "", "| variant | target | measured | verdict | issue |",
             "|---|---|---|---|---|"]
    for t in found:
        lines.append(f"| {t['row']} | {t['target']} | {t['value'] or ''} | {t['verdict']} | {t['issue']} |")
    return "\n".join(lines) + "\n"
