"""The sharing tests run single-threaded: on a busy 2-core machine, 2 torch threads made the
small linear algebra here 20-40x slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
