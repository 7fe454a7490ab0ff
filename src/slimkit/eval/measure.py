"""`evaluate`: the one measurement every report uses — score, bytes on disk, latency.

"Compression" is never computed from parameter counts: `bytes` is the size of the saved
artifact (the real file when there is one), `baseline_bytes` the original, uncompressed model as
fp32 safetensors (never the compressed model's own tensors: `slimkit.core.original`). Parameters
and nonzeros are reported beside them.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.latency import time_call
from slimkit.core.original import fp32_safetensors_bytes, original_fp32_bytes
from slimkit.core.provenance import base_of, task_for
from slimkit.core.task import Task
from slimkit.core.torch_utils import default_threads, num_threads
from slimkit.core.user_task import Metric, task_from
from slimkit.io.artifact import encode_model
from slimkit.io.bases import build_base
from slimkit.io.layout import file_chunks
from slimkit.zoo.resolve import load_safetensors_checkpoint

BATCH = 32
SLOW_CALL_S = 0.1     # latency: calls slower than this are timed fewer times ...
TIME_BUDGET_S = 2.0   # ... about this many seconds in all


@dataclass
class Measurement:
    score: float | None
    score_name: str
    bytes: int
    baseline_bytes: int
    params: int
    nonzeros: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)   # the task's other measurements (perplexity, kl)

    @property
    def ratio(self) -> float:
        return self.baseline_bytes / max(1, self.bytes)

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def baseline_bytes(model: nn.Module) -> int:
    """The original (uncompressed) model's size as fp32 safetensors: rebuilt from a builtin or
    Hugging Face base, recorded when a method first touched a user's module (`slimkit.core.original`),
    or the input checkpoint; a module nothing has touched is its own original."""
    base = base_of(model)
    if base.get("kind") in ("zoo", "hf"):
        return fp32_safetensors_bytes(_base_state(json.dumps(base, sort_keys=True)))
    known = original_fp32_bytes(model)
    if known is not None:
        return known
    path = base.get("path") if base.get("kind") == "weights" else None
    if isinstance(path, str) and path.endswith(".safetensors") and Path(path).is_file():
        return fp32_safetensors_bytes(load_safetensors_checkpoint(path).state_dict())
    return fp32_safetensors_bytes(model.state_dict())


_BASE_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _base_state(key: str) -> dict[str, torch.Tensor]:
    if key not in _BASE_CACHE:
        with torch.device("meta"):
            state = build_base(json.loads(key), None).state_dict()
        _BASE_CACHE[key] = state
    return _BASE_CACHE[key]


def artifact_bytes(model: nn.Module, path: str | os.PathLike | None = None) -> int:
    """Size on disk: of `path` if given, else of the .slim file `save` would write now."""
    if path is not None:
        return Path(path).stat().st_size
    arrays, manifest = encode_model(model)
    return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in file_chunks(arrays, manifest))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzeros) over parameters and float buffers of the model."""
    total = nonzero = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() or t.dtype in (torch.int8, torch.uint8):
            total += t.numel()
            nonzero += int(torch.count_nonzero(t))
    return total, nonzero


def latency(model: nn.Module, task: Task, batch: int = BATCH, threads: int | None = None,
            repeats: int = 20) -> dict[str, float]:
    """Median ms at batch 1 and at `batch`. A call slower than SLOW_CALL_S (a language model at
    batch 32) is repeated fewer times: about TIME_BUDGET_S in all, at least 3 times."""
    out = {}
    for b in (1, batch):
        inputs = task.example_inputs(b)

        def call(i: dict = inputs) -> object:
            return task.forward(model, i)

        with num_threads(threads or default_threads()), torch.inference_mode():
            times = time_call(call, repeats=1, warmup=1)   # one warm-up, then one timed run
            probe = times[0] / 1e3
            if probe < SLOW_CALL_S:
                times += time_call(call, repeats=repeats - 1, warmup=2)
            else:
                times += time_call(call, repeats=max(3, min(repeats, int(TIME_BUDGET_S / probe))) - 1, warmup=0)
        out[f"batch{b}"] = round(statistics.median(times), 4)
    return out


def evaluate(model: nn.Module, task: Task | None = None, path: str | os.PathLike | None = None,
             timing: bool = True, threads: int | None = None, *, data: object = None,
             metric: Metric | None = None) -> Measurement:
    """Score, bytes, baseline bytes (the original's, as fp32), parameters and latency of `model`.

    The score comes from `task`, or from `data` / `metric` (`slimkit.core.user_task.task_from`:
    your metric, else accuracy or fidelity on held-back batches), else from the task of a builtin or
    Hugging Face model.

    >>> m = evaluate(sk.zoo.load("lenet-300-100"))
    >>> m.score, m.bytes, m.latency_ms["batch1"]
    >>> evaluate(my_model, data=loader, metric=my_accuracy).score
    """
    if task is not None and (data is not None or metric is not None):
        raise SlimError("give either task= or data= / metric=, not both")
    task = task or task_from(data, metric, model) or task_for(model)
    model.eval()
    params, nonzeros = count_params(model)
    score, metrics = None, {}
    if task is not None:
        with torch.inference_mode():
            values = task.metrics(model)
        score = float(values[task.score_name])
        metrics = {k: float(f"{float(v):.6g}") for k, v in values.items() if k != task.score_name}
    lat = latency(model, task, threads=threads) if (task is not None and timing) else {}
    return Measurement(
        score=None if score is None or math.isnan(score) else round(score, 6),
        score_name=task.score_name if task else "score",
        bytes=artifact_bytes(model, path),
        baseline_bytes=baseline_bytes(model),
        params=params, nonzeros=nonzeros, latency_ms=lat, metrics=metrics,
    )
