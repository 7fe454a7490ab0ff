"""The loop tests train tiny models: one torch thread avoids oversubscribing a shared CPU."""

from __future__ import annotations

import pytest

from slimkit.core.torch_utils import num_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with num_threads(1):
        yield
