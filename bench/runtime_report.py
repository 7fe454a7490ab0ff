"""How a loaded artifact runs, for the note column: the runtime and per-layer kernel choices it
reports (`model.slimkit_runtime_report()`, `slimkit.runtime_report(model)` or
`slimkit.nn.kernels.runtime_report(model)`, whichever exists first), summarized in one line.
Reports are optional: a model or slimkit version without them gets no note.

>>> record_runtime(cands)          # after timing, so the kernel choices have been made
>>> cands[-1].extra.get("runtime")   # e.g. "torch; kernels auto; 3 layers; rows<=1: dense 3; rows<=64: int_mm 3"
"""

from __future__ import annotations

from typing import Any

from bench.harness import Candidate


def runtime_summary(model: Any) -> str | None:
    """A short description of how a loaded artifact runs, from `model.slimkit_runtime_report()`,
    else `slimkit.runtime_report(model)`, else `slimkit.nn.kernels.runtime_report(model)`; None
    when none exists, fails, or reports nothing (a record, never a reason to stop the bench)."""
    import importlib

    report = None
    try:
        own = getattr(model, "slimkit_runtime_report", None)
        if callable(own):
            report = own()
        else:
            for module in ("slimkit", "slimkit.nn.kernels"):
                fn = getattr(importlib.import_module(module), "runtime_report", None)
                if callable(fn):
                    report = fn(model)
                    break
    except Exception:  # noqa: BLE001
        return None
    return _summarize_report(report) if isinstance(report, dict) else None


def _runtime_text(runtime: Any) -> str | None:
    """"torch", or a dispatcher's state as "auto (batch=1: ort-float, batch=>1: ort-int; ORT graphs
    0.26 MB)"."""
    if isinstance(runtime, str):
        return runtime
    if not isinstance(runtime, dict) or not isinstance(runtime.get("runtime"), str):
        return None
    choices = runtime.get("choices") if isinstance(runtime.get("choices"), dict) else {}
    # keys such as "x:float32[*,64] batch=1": the batch part is what tells rows apart
    details = [", ".join(f"{str(k).rsplit(' ', 1)[-1]}: {v}" for k, v in choices.items())] if choices else []
    if isinstance(runtime.get("onnx_bytes"), int) and runtime["onnx_bytes"]:
        details.append(f"ORT graphs {runtime['onnx_bytes'] / 1e6:.2f} MB")
    return runtime["runtime"] + (f" ({'; '.join(details)})" if details else "")


def _summarize_report(report: dict) -> str | None:
    """"torch; kernels auto; 3 layers; rows<=1: dense 3; caches 0.20 MB" (None for a plain torch
    model with no reporting layers: nothing worth a note)."""
    if isinstance(report.get("summary"), str):
        return report["summary"][:160] or None
    layers = report.get("layers") if isinstance(report.get("layers"), dict) else {}
    runtime = _runtime_text(report.get("runtime"))
    if not layers and runtime in (None, "torch"):
        return None
    parts = [runtime] if runtime else []
    if isinstance(report.get("mode"), str):
        parts.append(f"kernels {report['mode']}")
    per_bucket: dict[str, dict[str, int]] = {}
    for entry in layers.values():
        choices = entry.get("choices") if isinstance(entry, dict) else None
        for bucket, kernel in (choices.items() if isinstance(choices, dict) else ()):
            counts = per_bucket.setdefault(str(bucket), {})
            counts[str(kernel)] = counts.get(str(kernel), 0) + 1
    if layers:
        parts.append(f"{len(layers)} layers")
    parts += [f"{b}: " + ", ".join(f"{k} {n}" for k, n in sorted(c.items(), key=lambda kv: -kv[1]))
              for b, c in per_bucket.items()]
    if isinstance(report.get("cache_bytes"), int) and report["cache_bytes"]:
        parts.append(f"caches {report['cache_bytes'] / 1e6:.2f} MB")
    return "; ".join(parts)[:200] or None


def record_runtime(cands: list[Candidate]) -> None:
    """After timing: each slimkit candidate's runtime summary into `extra["runtime"]`."""
    for c in cands:
        if c.kind == "slimkit" and c.ok and c.model is not None:
            summary = runtime_summary(c.model)
            if summary:
                c.extra["runtime"] = summary
