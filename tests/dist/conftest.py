"""Fixtures from calib_worker.py (a script for torchrun, so loaded here by path): a tiny random
BERT (MiniLM's shape, 3 blocks), a task of padded token batches, and the worker module itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")

_spec = importlib.util.spec_from_file_location("slimkit_tests_calib_worker",
                                               Path(__file__).with_name("calib_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture()
def calib_worker():
    """The calib_worker module (tiny models, tasks, `results()`)."""
    return worker


@pytest.fixture()
def make_bert():
    """tiny_bert(seed=0, pooler=True): a fresh tiny random BertModel."""
    return worker.tiny_bert


@pytest.fixture()
def tokens_task():
    return worker.TokensTask()
