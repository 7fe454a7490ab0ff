"""Held-out scoring for choosing candidates: never the split the final result is reported on.

>>> work, score, where = validation_setup(task)
>>> score(model), where
(0.9888, 'digits validation split (179 images)')
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimkit.core.task import Task
from slimkit.zoo.embedding_task import EmbeddingTask

VAL_SENTENCES = 256          # held-out calibration sentences for sentence encoders
CALIB_USED = 512             # calibration() never reads past this many sentences in a search


def validation_setup(task: Task) -> tuple[Task, Callable[[nn.Module], float], str]:
    """(the task candidates are compressed with, a score function on held-out data, a description).

    Digits tasks have a validation split; candidates use the task itself (methods fine-tune on the
    training split and choose epochs on validation). Sentence-encoder tasks are split: candidates
    calibrate and train (recovery distillation) on all calibration sentences but the last 256, and
    are scored (and choose their epochs) by fidelity on those 256; the evaluation sentences the
    report uses stay unseen. Any other task falls back to its own score, and says so.
    """
    own = getattr(task, "validation_score", None)
    if callable(own):
        data = getattr(task, "data", None)
        size = len(data.val) if data is not None and hasattr(data, "val") else None
        return task, own, f"{task.name} validation split" + (f" ({size} images)" if size else "")
    calib = getattr(task, "calib_sentences", None)
    if calib is not None and len(calib) >= CALIB_USED + VAL_SENTENCES:
        held = EmbeddingTask(task.tokenizer_path, task.reference, list(calib[:-VAL_SENTENCES]),
                             list(calib[-VAL_SENTENCES:]), name=task.name)
        held.tokenizer_ = getattr(task, "tokenizer_", None)   # e.g. byte-level ids for a folder without one
        return held, held.score, f"{VAL_SENTENCES} held-out calibration sentences (not the evaluation sentences)"
    return task, task.score, f"{task.name} score (this task has no validation data: chosen and reported on one set)"


def validation_scorer(task: Task) -> tuple[Callable[[nn.Module], float], str]:
    """(a score function on held-out data, a description of that data): see `validation_setup`."""
    _, score, where = validation_setup(task)
    return score, where
