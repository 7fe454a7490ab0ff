"""Distillation tests train small models: one thread is faster for them than two, and keeps the
suite quick on a shared 2-core machine."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    from slimkit._torch import num_threads

    with num_threads(1):
        yield
