from __future__ import annotations

import pytest
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import select_modules


def test_exact_regex_filter_and_ignore(lenet):
    names = lambda rows: [n for n, _ in rows]  # noqa: E731
    assert names(select_modules(lenet, types=(nn.Linear,))) == ["fc1", "fc2", "fc3"]
    assert names(select_modules(lenet, "fc2", (nn.Linear,))) == ["fc2"]
    assert names(select_modules(lenet, ["re:fc[12]"], (nn.Linear,))) == ["fc1", "fc2"]
    assert names(select_modules(lenet, None, (nn.Linear,), ignore=["fc3"])) == ["fc1", "fc2"]
    big = select_modules(lenet, None, (nn.Linear,), filter_fn=lambda m, n: m.in_features > 64)
    assert names(big) == ["fc2", "fc3"]


def test_selector_matching_nothing_is_an_error(lenet):
    with pytest.raises(SlimError, match="'conv9' matches no Linear module"):
        select_modules(lenet, "conv9", (nn.Linear,))
    with pytest.raises(SlimError, match="invalid module regex"):
        select_modules(lenet, "re:(", (nn.Linear,))
