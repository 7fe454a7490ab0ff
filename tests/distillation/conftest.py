"""Distillation tests train small models: one thread is faster for them than two, and keeps the
suite quick on a shared 2-core machine. The benchmark-sized tests (marked slow) run only when
asked for with `-m slow` (as `make bench` does), not on a plain `pytest tests/distill`."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="benchmark-sized: run with -m slow (make bench)")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_thread():
    from slimkit.core.torch_utils import num_threads

    with num_threads(1):
        yield
