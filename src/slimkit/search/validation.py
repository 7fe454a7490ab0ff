"""Held-out scoring for choosing candidates: never the split the final result is reported on.

>>> score, where = validation_scorer(task)
>>> score(model), where
(0.9888, 'digits validation split (179 images)')
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimkit.eval.task import Task

VAL_SENTENCES = 256          # held-out calibration sentences for sentence encoders
CALIB_USED = 512             # calibration() never reads past this many sentences in a search


def validation_scorer(task: Task) -> tuple[Callable[[nn.Module], float], str]:
    """(a score function on held-out data, a description of that data).

    Digits tasks have a validation split. Sentence-encoder tasks get fidelity on the last 256
    calibration sentences (the methods calibrate on the first 512, the report uses the
    evaluation sentences). Any other task falls back to its own score, and says so.
    """
    own = getattr(task, "validation_score", None)
    if callable(own):
        data = getattr(task, "data", None)
        size = len(data.val) if data is not None and hasattr(data, "val") else None
        return own, f"{task.name} validation split" + (f" ({size} images)" if size else "")
    calib = getattr(task, "calib_sentences", None)
    if calib is not None and len(calib) >= CALIB_USED + VAL_SENTENCES:
        from slimkit.eval.embedding_task import EmbeddingTask

        held = EmbeddingTask(task.tokenizer_path, task.reference, list(calib[:CALIB_USED]),
                             list(calib[-VAL_SENTENCES:]), name=f"{task.name}-validation")
        return held.score, f"{VAL_SENTENCES} held-out calibration sentences (not the evaluation sentences)"
    return task.score, f"{task.name} score (this task has no validation data: chosen and reported on one set)"
