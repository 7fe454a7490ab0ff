"""The targets the issues set for `make bench`, checked against a case's measured rows.

Each target names a row (a recipe or peer), a measured quantity and a bound. A target whose row
was not measured reads "not measured" (never met, never failed). Accuracy drops use the mean
over seeds against the same-seed fp32 baseline when several seeds were run. `EveryRecipe` is one
row over all of a case's slimkit recipes (issue #23: none slower than torch fp32), listing the
ones that miss. Speed targets (`speed=True`) are also checked on a --speed-only pass (e.g. the
SLIMKIT_COMPUTE_DTYPE=float32 pass of `make bench`); the others only on a full pass.

>>> check(case)          # -> [{"target": ..., "value": ..., "verdict": "met" | "missed" | ...}]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import BASELINE, ORT_INT8, case_key


@dataclass(frozen=True)
class Target:
    case: str
    row: str
    text: str
    measure: Callable[[dict, dict], float | None]   # (row, all rows by name) -> value
    ok: Callable[[float], bool]
    fmt: str = "{:.4g}"
    source: str = ""
    speed: bool = False     # a latency target: checked on --speed-only passes too

    def judge(self, rows: dict) -> tuple[str | None, str]:
        """(measured value as shown, verdict) against the case's rows by name."""
        row = rows.get(self.row)
        if row is not None and row.get("status") != "ok":
            return None, f"not measured ({row['status']})"
        value = None if row is None else self.measure(row, rows)
        if value is None:
            return None, "not measured"
        shown = self.fmt.format(value)
        if self.measure is _change_pt and row.get("seeds_done", 1) > 1:
            shown += f" (mean of {row['seeds_done']} seeds)"
        return shown, "met" if self.ok(value) else "missed"


@dataclass(frozen=True)
class EveryRecipe:
    """Every slimkit recipe row of a case at least `floor` times as fast as torch fp32, at batch 1
    and batched; one verdict row that lists the recipes that miss and those not measured."""

    case: str
    floor: float = 1.0
    source: str = "#23"
    speed: bool = True
    row: str = "every recipe"

    @property
    def text(self) -> str:
        return f">= {self.floor:.1f}x torch fp32 speed at batch 1 and batched"

    def _x(self, v: float) -> str:
        """"0.95x"; three decimals where two would hide a miss ("0.998x", not "1.00x")."""
        return f"{v:.3f}x" if v < self.floor <= round(v, 2) else f"{v:.2f}x"

    def judge(self, rows: dict) -> tuple[str | None, str]:
        recipes = [r for r in rows.values() if r["kind"] == "slimkit" and r["status"] != "not applicable"]
        timed = [r for r in recipes if r["status"] == "ok" and r.get("speedup_b1") and r.get("speedup_batched")]
        untimed = [r for r in recipes if r not in timed]
        if not timed:
            return None, "not measured"
        slow = [r for r in timed if min(r["speedup_b1"], r["speedup_batched"]) < self.floor]
        shown = (f"{len(slow)} of {len(timed)} slower: " + "; ".join(
            f"{r['name']} {self._x(r['speedup_b1'])} / {self._x(r['speedup_batched'])}" for r in slow)
            if slow else f"all {len(timed)} at or above")
        if untimed:
            shown += "; not measured: " + ", ".join(f"{r['name']} ({r['status']})" for r in untimed)
        verdict = "missed" if slow else "met" if not untimed else f"met ({len(untimed)} not measured)"
        return shown, verdict


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


def _extra_vs(peer: str, key: str, inverse: bool = False) -> Callable[[dict, dict], float | None]:
    """The row's `extra[key]` over a peer's (the peer's over the row's with `inverse`)."""
    def measure(row: dict, rows: dict) -> float | None:
        mine, other = (row.get("extra") or {}).get(key), ((rows.get(peer) or {}).get("extra") or {}).get(key)
        if not mine or not other:
            return None
        return other / mine if inverse else mine / other
    return measure


def _bytes_vs_fp32(row: dict, rows: dict) -> float | None:
    base = rows.get(BASELINE) or {}
    return row["bytes"] / base["bytes"] if row.get("bytes") and base.get("bytes") else None


def _ppl_change_vs(peer: str) -> Callable[[dict, dict], float | None]:
    """The row's perplexity against `peer`'s, as a change in percent."""
    def measure(row: dict, rows: dict) -> float | None:
        ratio = _extra_vs(peer, "perplexity")(row, rows)
        return None if ratio is None else 100 * (ratio - 1)
    return measure


_ppl_change_pct = _ppl_change_vs(BASELINE)


BF16 = "torch bf16"
RTN4 = "slimkit int4 g64"


def _share_of_rtn_increase(row: dict, rows: dict) -> float | None:
    """The row's perplexity increase over fp32 as a share of the RTN 4-bit row's, in the same run."""
    mine, rtn = _ppl_change_pct(row, rows), rows.get(RTN4) and _ppl_change_pct(rows[RTN4], rows)
    return None if mine is None or not rtn or rtn <= 0 else mine / rtn

TARGETS: list[Target | EveryRecipe] = [
    # issue 3: quantization
    Target("minilm", "int8", "fidelity >= 0.995", _get("score"), lambda v: v >= 0.995, "{:.5f}", "#3"),
    Target("minilm", "int8", "file <= 23.5 MB", _mb,
           lambda v: v <= 23.5, "{:.2f} MB", "#3"),
    Target("minilm", "int8", "batched latency <= ONNX Runtime int8 (same run)", _ms_vs(ORT_INT8),
           lambda v: v <= 1.0, "{:.2f}x of ORT", "#3", speed=True),
    Target("minilm", "int8", "time to quantize <= 10 s", _get("compress_s"), lambda v: v <= 10, "{:.1f} s",
           "#3"),
    Target("minilm", "int4", "fidelity >= 0.98", _get("score"), lambda v: v >= 0.98, "{:.5f}", "#3"),
    Target("minilm", "int4", "file <= 13.5 MB", _mb,
           lambda v: v <= 13.5, "{:.2f} MB", "#3"),
    Target("minilm", "int4", "time to quantize <= 60 s", _get("compress_s"), lambda v: v <= 60, "{:.1f} s",
           "#3"),
    Target("minilm", "int4", "batched latency <= 1.5x torch fp32", _ms_vs(BASELINE), lambda v: v <= 1.5,
           "{:.2f}x of fp32", "#3", speed=True),
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
           lambda v: v < 1.0, "{:.2f}x of fp32", "#4", speed=True),
    Target("lenet5", "apoz", "batched latency below the unpruned model", _ms_vs(BASELINE),
           lambda v: v < 1.0, "{:.2f}x of fp32", "#4", speed=True),
    Target("minilm", "prune-structured", "speed-up >= 1.3x over the unpruned model", _get("speedup_batched"),
           lambda v: v >= 1.3, "{:.2f}x", "#4", speed=True),
    # issue 5: parameter sharing
    Target("lenet-300-100", "deep-compression", "file >= 50x smaller than fp32", _get("ratio"),
           lambda v: v >= 50, "{:.1f}x", "#5"),
    Target("lenet-300-100", "deep-compression", "accuracy drop <= 0.5 pt", _change_pt, lambda v: v >= -0.5,
           "{:+.2f} pt", "#5"),
    Target("lenet-300-100", "hashed", "accuracy drop <= 0.5 pt", _change_pt, lambda v: v >= -0.5,
           "{:+.2f} pt", "#5"),
    Target("lenet-300-100", "lowrank", "accuracy drop <= 1 pt", _change_pt, lambda v: v >= -1.0,
           "{:+.2f} pt", "#5"),
    # issue 23: fast where users run it (checked on the machine's own path and with float32 forced)
    *(EveryRecipe(case) for case in ("lenet-300-100", "lenet5", "minilm")),
    Target("minilm", "int8", "batch-1 latency <= ONNX Runtime int8", _ms_vs(ORT_INT8, "ms_b1"),
           lambda v: v <= 1.0, "{:.2f}x of ORT int8", "#23", speed=True),
    Target("minilm", "int8", "batch-1 latency <= 0.8x ONNX Runtime int8 (moonshot)", _ms_vs(ORT_INT8, "ms_b1"),
           lambda v: v <= 0.8, "{:.2f}x of ORT int8", "#23", speed=True),
    Target("minilm", "int8", "batched latency <= 0.81x ONNX Runtime int8 (the AMX figure of #23)",
           _ms_vs(ORT_INT8), lambda v: v <= 0.81, "{:.2f}x of ORT int8", "#23", speed=True),
    Target("lenet5", "int8", "batch-1 latency <= ONNX Runtime int8", _ms_vs(ORT_INT8, "ms_b1"),
           lambda v: v <= 1.0, "{:.2f}x of ORT int8", "#23", speed=True),
    # issue 21: SmolLM2-135M decoding and 4-bit quality (GPTQ against RTN in the same run)
    Target("lm-decode", "slimkit int8", "perplexity <= +0.5%", _ppl_change_pct, lambda v: v <= 0.5, "{:+.2f}%",
           "#21"),
    Target("lm-decode", "slimkit int8", "file <= 0.28x fp32", _bytes_vs_fp32, lambda v: v <= 0.28, "{:.3f}x",
           "#21"),
    Target("lm-decode", "slimkit int8", "decoding >= 1.3x torch bf16 tokens/s", _extra_vs(BF16, "decode_tok_s"),
           lambda v: v >= 1.3, "{:.2f}x", "#21", speed=True),
    Target("lm-decode", "slimkit int8 compiled", "decoding >= 1.3x torch bf16 tokens/s",
           _extra_vs(BF16, "decode_tok_s"), lambda v: v >= 1.3, "{:.2f}x", "#21", speed=True),
    Target("lm-decode", "slimkit int8 compiled", "decoding >= 1.3x torch bf16 compiled tokens/s",
           _extra_vs("torch bf16 compiled", "decode_tok_s"), lambda v: v >= 1.3, "{:.2f}x", "#21", speed=True),
    Target("lm-decode", "slimkit int4 g64", "file <= 0.17x fp32", _bytes_vs_fp32, lambda v: v <= 0.17,
           "{:.3f}x", "#21"),
    Target("lm-decode", "slimkit int4 g64", "decoding >= 1.5x torch bf16 tokens/s",
           _extra_vs(BF16, "decode_tok_s"), lambda v: v >= 1.5, "{:.2f}x", "#21", speed=True),
    Target("lm-decode", "slimkit int4 g64 compiled", "decoding >= 1.5x torch bf16 tokens/s",
           _extra_vs(BF16, "decode_tok_s"), lambda v: v >= 1.5, "{:.2f}x", "#21", speed=True),
    Target("lm-decode", "slimkit int4 g64 compiled", "decoding >= 1.5x torch bf16 compiled tokens/s",
           _extra_vs("torch bf16 compiled", "decode_tok_s"), lambda v: v >= 1.5, "{:.2f}x", "#21", speed=True),
    Target("lm-decode", "slimkit gptq-int4", "4-bit g64 perplexity <= +8%", _ppl_change_pct, lambda v: v <= 8.0,
           "{:+.2f}%", "#21"),
    Target("lm-decode", "slimkit gptq-int4", "perplexity increase <= 1/3 of RTN's (int4 g64 row)",
           _share_of_rtn_increase, lambda v: v <= 1 / 3, "{:.2f} of RTN's", "#21"),
    Target("lm-decode", "slimkit gptq-int4", "file <= 0.17x fp32", _bytes_vs_fp32, lambda v: v <= 0.17,
           "{:.3f}x", "#21"),
    Target("lm-decode", "llama.cpp Q8_0 of slimkit int8", "llama.cpp's perplexity within 1% of slimkit's (same file)",
           _ppl_change_vs("slimkit int8"), lambda v: abs(v) <= 1.0, "{:+.2f}%", "#21"),
    Target("lm-decode", "slimkit int4 g64", "decoding >= 0.7x llama.cpp Q4_0 tokens/s (moonshot)",
           _extra_vs("llama.cpp Q4_0", "decode_tok_s"), lambda v: v >= 0.7, "{:.2f}x", "#21", speed=True),
]


def check(case: dict) -> list[dict]:
    """Every target of this case with its measured value and a verdict (on a --speed-only pass,
    the speed targets only)."""
    rows = {r["name"]: r for r in case["rows"]}
    out = []
    for t in TARGETS:
        if t.case != case["case"] or (case.get("speed_only") and not t.speed):
            continue
        shown, verdict = t.judge(rows)
        out.append({"row": t.row, "target": t.text, "issue": t.source, "value": shown,
                    "verdict": verdict})
    return out


def targets_markdown(case: dict) -> str:
    found = check(case)
    if not found:
        return ""
    lines = ["", f"Targets ({case_key(case)}):", "", "| variant | target | measured | verdict | issue |",
             "|---|---|---|---|---|"]
    for t in found:
        lines.append(f"| {t['row']} | {t['target']} | {t['value'] or ''} | {t['verdict']} | {t['issue']} |")
    return "\n".join(lines) + "\n"
