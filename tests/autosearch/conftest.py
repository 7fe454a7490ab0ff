"""Search fixtures: cross-validation fold baselines trained in a few epochs (the protocol is the
same; the zoo's 100 epochs per fold would make every search test take a minute)."""

from __future__ import annotations

import dataclasses

import pytest

QUICK_EPOCHS = 20


@pytest.fixture(scope="session")
def quick_folds():
    """Fold baselines of the digits models train for QUICK_EPOCHS epochs (cached under their own key)."""
    from slimkit.zoo.registry import ZOO

    with pytest.MonkeyPatch.context() as mp:
        for name in ("lenet-300-100", "lenet5"):
            entry = ZOO[name]
            mp.setitem(ZOO, name, dataclasses.replace(entry, train_settings={**entry.train_settings,
                                                                             "epochs": QUICK_EPOCHS}))
        yield
