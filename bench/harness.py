"""The bench harness: candidates of one case measured side by side in one process.

A *case* is one model with its task (digits accuracy, or MiniLM fidelity). Its *candidates* are
the peers (torch fp32 / bf16 / dynamic int8, ONNX Runtime fp32 / int8) and slimkit's recipes,
each with a real file on disk. Latency is measured for all candidates of a case together, in
interleaved rounds (`slimkit.core.latency.interleaved`) at a fixed thread count, so drift on a
shared machine hits every candidate alike; ratios are taken against torch fp32 eager measured in
the same rounds.

>>> from bench.harness import Candidate, time_candidates
>>> cands = [Candidate("torch fp32", "peer", model=m, file=p, bytes=p.stat().st_size, score=0.98)]
>>> time_candidates(cands, task, batch=32, protocol=QUICK, threads=2)   # fills ms_b1 / ms_batched
"""

from __future__ import annotations

import gc
import json
import os
import signal
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from bench.machine import machine_line
from slimkit.core.latency import interleaved

BASELINE = "torch fp32"
ORT_FP32 = "onnxruntime fp32"
ORT_INT8 = "onnxruntime int8 (per-channel)"
NOT_IMPLEMENTED = "not yet implemented"
# a pause before each candidate's block of timed calls: ONNX Runtime peers busy-wait after each run
# by default, and on 2 cores their spinning threads doubled the next torch candidate's batched time
SETTLE_S = 0.005
LONG_RUNS = Path(__file__).with_name("long_runs.md")  # hand-measured runs too long for a case, appended


@dataclass(frozen=True)
class Protocol:
    """How long to time: `rounds` interleaved rounds of `repeats` calls per candidate."""

    rounds: int
    repeats_b1: int
    repeats_batched: int
    warmup: int = 2

    def scaled(self, factor: int) -> Protocol:
        """More calls per round (for models that run in microseconds)."""
        return Protocol(self.rounds, self.repeats_b1 * factor, self.repeats_batched * factor,
                        self.warmup * factor)


FULL = Protocol(rounds=7, repeats_b1=20, repeats_batched=3)
QUICK = Protocol(rounds=2, repeats_b1=5, repeats_batched=2, warmup=1)


@dataclass
class Candidate:
    """One variant of a case's model: how to run it and what it cost.

    `model` is an `nn.Module` driven by the case's task (`task.forward(model, inputs)`); peers
    from other runtimes are wrapped as modules (see `bench.peers.OrtModule`). A candidate that
    could not be built has `status` other than "ok" and no numbers.
    """

    name: str
    kind: str                          # "peer" or "slimkit"
    model: Any = None
    file: str | None = None            # the artifact on disk whose size is `bytes`
    bytes: int | None = None
    score: float | None = None
    params: int | None = None
    nonzeros: int | None = None
    compress_s: float | None = None
    ms_b1: float | None = None
    ms_batched: float | None = None
    status: str = "ok"
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def row(self) -> dict:
        """The JSON-able record (everything but the model; the file by name, its folder is temporary)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        data["file"] = Path(self.file).name if self.file else None
        return data


def time_candidates(cands: list[Candidate], task: Any, batch: int, protocol: Protocol,
                    threads: int) -> None:
    """Fill `ms_b1` and `ms_batched` of every usable candidate, in interleaved rounds (after a
    `gc.collect()`, as every candidate would find a process that is only serving)."""
    live = []
    for c in cands:
        if not c.ok or c.model is None:
            continue
        try:  # one call per batch size first: a candidate that cannot run is reported, not timed
            with torch.inference_mode():
                for size in (1, batch):
                    task.forward(c.model, task.example_inputs(size))
            live.append(c)
        except Exception as exc:  # noqa: BLE001
            c.status, c.note = "failed", f"forward failed: {type(exc).__name__}: {str(exc)[:120]}"
    for size, repeats, attr in ((1, protocol.repeats_b1, "ms_b1"),
                                (batch, protocol.repeats_batched, "ms_batched")):
        inputs = task.example_inputs(size)
        # garbage left by compression (autograd graphs, hooks) makes the collector run during the
        # timed calls: it doubled torch fp32's 45 us batch-1 lenet forward after some recipes
        gc.collect()
        fns: dict[str, Callable[[], object]] = {
            c.name: (lambda m=c.model, i=inputs: task.forward(m, i)) for c in live}
        medians = interleaved(fns, rounds=protocol.rounds, repeats=repeats,
                              warmup=protocol.warmup, threads=threads, settle_s=SETTLE_S)
        for c in live:
            setattr(c, attr, round(medians[c.name], 4))


class TimeBudgetExceeded(BaseException):
    """Raised inside a compression step that ran past its time limit (BaseException, so a
    method's own `except Exception` cannot swallow it)."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the block with `TimeBudgetExceeded` after `seconds` (main thread, Unix)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def _alarm(signum, frame):
        raise TimeBudgetExceeded(f"ran past its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- results

def case_result(name: str, cands: list[Candidate], *, score_name: str, batch: int, command: str,
                protocol: Protocol, threads: int, wall_s: float, info: dict, **extra: Any) -> dict:
    """The JSON record of one case: rows with ratios against torch fp32 from the same run."""
    base = next((c for c in cands if c.name == BASELINE and c.ok), None)
    rows = []
    for c in cands:
        row = c.row()
        if base is not None and c.ok:
            if base.bytes and c.bytes:
                row["ratio"] = round(base.bytes / c.bytes, 3)
            if base.score is not None and c.score is not None:
                row["score_change"] = c.score - base.score
            changes = c.extra.get("seed_changes") or []
            if len(changes) > 1:
                row["score_change_mean"] = statistics.fmean(changes)
                row["score_change_sd"] = statistics.stdev(changes)
                row["seeds_done"] = len(changes)
            if base.ms_b1 and c.ms_b1:
                row["speedup_b1"] = round(base.ms_b1 / c.ms_b1, 3)
            if base.ms_batched and c.ms_batched:
                row["speedup_batched"] = round(base.ms_batched / c.ms_batched, 3)
        for peer, key in ((ORT_FP32, "ort_fp32_time"), (ORT_INT8, "ort_int8_time")):
            ref = next((p for p in cands if p.name == peer and p.ok), None)
            for size in ("b1", "batched"):
                mine, theirs = getattr(c, f"ms_{size}"), ref and getattr(ref, f"ms_{size}")
                if c.ok and mine and theirs:
                    row[f"{key}_{size}"] = round(mine / theirs, 3)
        rows.append(row)
    return {"case": name, "score_name": score_name, "batch": batch, "threads": threads,
            "command": command, "protocol": asdict(protocol), "wall_s": round(wall_s, 1),
            "machine": info, "rows": rows, **extra}


def case_key(case: dict) -> str:
    """The case's key in results.json: its name for a full run on the machine's own compute dtype,
    else the name with the pass, e.g. "lenet5 [SLIMKIT_COMPUTE_DTYPE=float32, speed only]"."""
    tags = []
    if case.get("compute_pass", "auto") != "auto":
        tags.append(f"SLIMKIT_COMPUTE_DTYPE={case['compute_pass']}")
    if case.get("speed_only"):
        tags.append("speed only")
    return f"{case['case']} [{', '.join(tags)}]" if tags else case["case"]


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    if n >= 10_000_000:
        return f"{n / 1e6:.1f} MB"
    if n >= 10_000:
        return f"{n / 1e3:.1f} kB"
    return f"{n:,} B"


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.3f}" if ms < 1 else f"{ms:.2f}"


def _fmt_change(row: dict, score_name: str) -> str:
    """The change against torch fp32; over several seeds, mean +- sd against the same-seed fp32."""
    change = row.get("score_change")
    if change is None:
        return ""
    scale, unit, digits = (100, " pt", 2) if score_name == "accuracy" else (1, "", 5)
    if row.get("seeds_done", 1) > 1:
        mean, sd = row["score_change_mean"] * scale, row["score_change_sd"] * scale
        return f"{mean:+.{digits}f} ± {sd:.{digits}f}{unit} ({row['seeds_done']} seeds)"
    return f"{change * scale:+.{digits}f}{unit}"


def _fmt_score(score: float | None, score_name: str) -> str:
    if score is None:
        return ""
    return f"{score * 100:.2f}%" if score_name == "accuracy" else f"{score:.5f}"


def _pair(row: dict, key: str) -> str:
    """"b1 / batched" of `key_b1` and `key_batched`, e.g. "0.50x / 1.20x"."""
    parts = [row.get(f"{key}_b1"), row.get(f"{key}_batched")]
    if all(p is None for p in parts):
        return ""
    return " / ".join("–" if p is None else f"{p:.2f}x" for p in parts)


def _speedup(row: dict) -> str:
    return _pair(row, "speedup")


def _note(row: dict) -> str:
    runtime = row.get("extra", {}).get("runtime")
    return "; ".join(x for x in (row["note"], runtime and f"runtime: {runtime}") if x)


# speed-up: torch fp32's time / the row's (> 1 is faster); time vs ORT: the row's time / ONNX
# Runtime's (< 1 is faster), the way issue #23 states its targets
ORT_COLUMNS = {"ort_fp32_time": "time vs ORT fp32 (b1 / batched)",
               "ort_int8_time": "time vs ORT int8 (b1 / batched)"}
COLUMNS = ["variant", "file bytes", "ratio vs fp32 file", "score", "score change", "ms batch 1",
           "ms batched", "speed-up vs torch fp32 (b1 / batched)", *ORT_COLUMNS.values(),
           "nonzero params", "compress s", "note"]


def case_markdown(case: dict) -> str:
    """One markdown section: heading, protocol, the table."""
    score_name = case["score_name"]
    second = case.get("second_score_name")
    ort = [k for k in ORT_COLUMNS if any(f"{k}_b1" in r or f"{k}_batched" in r for r in case["rows"])]
    left_out = {title for k, title in ORT_COLUMNS.items() if k not in ort}   # no ONNX Runtime peer
    columns = [c for c in COLUMNS[:4] + ([second] if second else []) + COLUMNS[4:] if c not in left_out]
    lines = [f"## {case_key(case)}", "",
             f"Score: {score_name}. Batched = batch {case['batch']}"
             f"{case.get('batch_note', '')}. {case['threads']} thread(s); latency = median of "
             f"{case['protocol']['rounds']} interleaved rounds. Case wall time {case['wall_s']:.0f} s.",
             "", f"Command: `{case['command']}`", "", f"Machine: {machine_line(case['machine'])}", ""]
    if case.get("speed_only"):
        made = case.get("artifacts_from")
        lines += ["Speed-only pass: peers torch fp32 and ONNX Runtime fp32 / int8 only, one seed; the slimkit "
                  + (f"artifacts are those kept by `{made['command']}` ({made['date']}), loaded and "
                     "scored again on this pass's path." if made else "artifacts were compressed in this pass."),
                  ""]
    if case.get("seeds", 1) > 1:
        lines += [f"Score and bytes are those of the seed-0 (zoo) model; the score change is the mean ± sd "
                  f"over up to {case['seeds']} training seeds, each against the fp32 model of the same "
                  "seed.", ""]
    if case.get("quick"):
        lines += ["**--quick run: few timing rounds, numbers are noisy.**", ""]
    loads = [x for x in (case.get("load_start"), (case["machine"].get("load_avg") or [None])[0]) if x]
    cores = case["machine"].get("cores") or 1
    if loads and max(loads) > cores:
        lines += [f"**The machine was busy (load average up to {max(loads):.1f} on {cores} cores): "
                  "latencies are unreliable, ratios between candidates less so.**", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in case["rows"]:
        name = row["name"] + (" (slimkit)" if row["kind"] == "slimkit" else "")
        if row["status"] != "ok":
            cells = [name] + [""] * (len(columns) - 2) + [row["status"] + (f": {row['note']}"
                                                                        if row["note"] else "")]
        else:
            ratio = row.get("ratio")
            cells = [name, _fmt_bytes(row["bytes"]), "" if ratio is None else f"{ratio:.2f}x",
                     _fmt_score(row["score"], score_name)]
            if second:
                cells.append(_fmt_score(row["extra"].get("second_score"), score_name))
            cells += [_fmt_change(row, score_name),
                      _fmt_ms(row["ms_b1"]), _fmt_ms(row["ms_batched"]), _speedup(row)]
            cells += [_pair(row, k) for k in ort]
            cells += ["" if row["nonzeros"] is None else f"{row['nonzeros']:,}",
                      "" if row["compress_s"] is None else f"{row['compress_s']:.1f}", _note(row)]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    from bench.targets import targets_markdown

    return "\n".join(lines) + "\n" + targets_markdown(case)


def render(results: dict) -> str:
    """The whole RESULTS.md."""
    cases = results.get("cases", {})
    head = ["# slimkit benchmarks", "",
            "Written by `python -m bench` (see `bench/__main__.py`). Every candidate of a model is "
            "measured in the same process, latency in interleaved rounds; bytes are the real "
            "files on disk (.slim for slimkit, .onnx for ONNX Runtime, safetensors or a torch "
            "state file for PyTorch); ratios and speed-ups are against torch fp32 eager in the same "
            "run (speed-up > 1 is faster), \"time vs ORT\" is a row's latency over ONNX Runtime fp32's "
            "or int8's in the same rounds (< 1 is faster). Each Machine line gives the CPU flags and the "
            "compute dtype; sections tagged [SLIMKIT_COMPUTE_DTYPE=...] are a pass with that dtype forced. "
            "A recipe that is not built yet reads \"not yet implemented\", never a number.", ""]
    body = [case_markdown(cases[k]) for k in sorted(cases, key=_case_order)]
    tail = [LONG_RUNS.read_text(encoding="utf-8")] if LONG_RUNS.is_file() else []
    return "\n".join(head + body + tail)


def _case_order(key: str) -> tuple[int, str]:
    """minilm, lenet-300-100, lenet5 first, each followed by its other passes ("lenet5 [...]")."""
    order = ["minilm", "lenet-300-100", "lenet5"]
    name = key.split(" [")[0]
    return (order.index(name) if name in order else len(order), key)


def write_results(new_cases: list[dict], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Merge `new_cases` into `out_dir/results.json` (replacing cases of the same name) and
    rewrite `RESULTS.md`; both files are written atomically."""
    from slimkit.io.safetensors_file import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "RESULTS.md"
    results: dict = {"cases": {}}
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text())
            if isinstance(old, dict) and isinstance(old.get("cases"), dict):
                results = old
        except (OSError, ValueError):
            pass
    for case in new_cases:
        results["cases"][case_key(case)] = case
    atomic_write(json_path, [json.dumps(results, indent=1, default=_json_default).encode() + b"\n"])
    atomic_write(md_path, [render(results).encode()])
    umask = os.umask(0)
    os.umask(umask)
    for path in (json_path, md_path):   # the temporary file was private (0600); these are for git
        os.chmod(path, 0o666 & ~umask)
    return md_path, json_path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj
    return str(obj)


def summary_lines(case: dict) -> list[str]:
    """A compact console table of one case."""
    out = [f"{case_key(case)} ({case['wall_s']:.0f} s)"]
    for row in case["rows"]:
        if row["status"] != "ok":
            out.append(f"  {row['name']:<30} {row['status']} {row['note']}")
            continue
        second = row["extra"].get("second_score")
        second = f" ({_fmt_score(second, case['score_name'])})" if second is not None else ""
        out.append(f"  {row['name']:<30} {_fmt_bytes(row['bytes']):>10} "
                   f"{_fmt_score(row['score'], case['score_name']):>10}{second} "
                   f"{_fmt_change(row, case['score_name']):>10} b1 {_fmt_ms(row['ms_b1']):>7} ms "
                   f"batched {_fmt_ms(row['ms_batched']):>7} ms  {_speedup(row)}"
                   + (f"  time vs ORT int8 {_pair(row, 'ort_int8_time')}" if "ort_int8_time_b1" in row else ""))
    return out
