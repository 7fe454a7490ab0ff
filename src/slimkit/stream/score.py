"""The score of a streamed artifact, measured on the written file, or a plain statement that it was not.

A compress that streams (tensor by tensor, or block by block from a Hugging Face folder) never holds the
model whole, so it has nothing in memory to score. `score_streamed` scores the file itself: when the
folder's task exists (`slimkit.core.provenance.task_for`: perplexity for a causal LM, embedding fidelity
for an encoder) and the original and the result fit in memory together, it loads the original from the
folder and the result from the written .slim (`slimkit.load`, torch runtime) and measures both on that
task, as `slimkit compress` does in memory (same keys, same drop and `max_drop` rule). Otherwise the
result says `"scored": false` and why, and its score is None: never a number that was not measured.

>>> result = score_streamed("path/to/llama-folder", "llama-int4.slim", max_drop=None)
>>> result["scored"], result["score_name"], result["drop"], result["within_budget"]
(True, 'perplexity', 1.8, False)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from slimkit.core.procfs import proc_bytes
from slimkit.core.provenance import task_for
from slimkit.eval.measure import evaluate
from slimkit.io.artifact import load, read_manifest
from slimkit.io.decode import _DTYPES
from slimkit.pipeline.compress import DEFAULT_MAX_DROP, score_drop
from slimkit.zoo.hf import load_hf_folder

EVAL_SLACK = 256 << 20   # bytes for activations, the tokenizer and the task's reference outputs


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is none)."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


def not_scored(why: str, limit: float | None) -> dict:
    """The score keys of a result that was not measured, and why."""
    return {"scored": False, "not_scored": why, "score": None, "baseline_score": None, "score_name": None,
            "drop": None, "drop_unit": None, "max_drop": limit, "within_budget": None}


def score_streamed(source: str | os.PathLike, out: str | os.PathLike, max_drop: float | None,
                   memory: int | None = None) -> dict:
    """Score the .slim at `out` against the Hugging Face folder `source` it was streamed from (see the
    module doc). `max_drop`: points for a score in [0, 1], else percent (default 1). `memory`: the bytes
    that may be used (default: half of MemAvailable, the rule by which `compress` streams at all).
    Returns scored, not_scored (why, or None), score, baseline_score, score_name, drop, drop_unit,
    max_drop, within_budget, and the task's other metrics (metrics, baseline_metrics)."""
    limit = DEFAULT_MAX_DROP if max_drop is None else float(max_drop)
    manifest = read_manifest(out)
    folder = Path(source)
    if manifest.base.get("kind") != "hf" or not folder.is_dir():
        return not_scored("a bare checkpoint has no architecture to run: its .slim holds tensors only", limit)
    fp32 = sum(math.prod(e.shape) * max(4, _DTYPES.get(e.dtype, 4)) for e in manifest.tensors.values())
    need = 2 * fp32 + EVAL_SLACK   # the original and the result, decoded, at once
    if memory is None:
        free = available_memory()
        memory = None if free is None else free // 2
    if memory is None or need > memory:
        have = "unknown" if memory is None else f"{memory / 1e9:.1f} GB"
        return not_scored(f"the original and the result need ~{need / 1e9:.1f} GB in memory together to be "
                          f"scored ({have} usable); score the file where it fits: "
                          "sk.evaluate(sk.load(OUT), task_for(sk.resolve(FOLDER))) "
                          "(task_for from slimkit.core.provenance)", limit)
    original = load_hf_folder(folder)
    task = task_for(original)
    if task is None:
        return not_scored(f"no task scores the model in {folder.name} (no tokenizer or known head)", limit)
    before = evaluate(original, task, timing=False)
    del original
    after = evaluate(load(out, runtime="torch"), task, path=out, timing=False)
    drop, unit = score_drop(before.score, after.score)
    result = {"scored": True, "not_scored": None, "score": after.score, "baseline_score": before.score,
              "score_name": after.score_name, "drop": drop, "drop_unit": unit, "max_drop": limit,
              "within_budget": drop is not None and drop <= limit + 1e-9}
    if after.metrics:
        result |= {"metrics": after.metrics, "baseline_metrics": before.metrics}
    return result
