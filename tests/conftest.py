"""Shared fixtures. Models are trained once per session into a temporary cache."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
sys.path.insert(0, str(Path(__file__).parent))   # shared test helpers (cli_runner) import by name


@pytest.fixture(scope="session")
def lenet_trained():
    import slimkit as sk

    return sk.zoo.load("lenet-300-100")


@pytest.fixture()
def lenet(lenet_trained):
    """A fresh copy of the trained lenet-300-100 (tests may modify it)."""
    model = copy.deepcopy(lenet_trained)
    model.__dict__["slimkit_base"] = dict(lenet_trained.__dict__["slimkit_base"])
    model.__dict__.pop("slimkit_edits", None)
    return model


@pytest.fixture(scope="session")
def lenet5_trained():
    import slimkit as sk

    return sk.zoo.load("lenet5")


@pytest.fixture(scope="session")
def digits_task():
    from slimkit.zoo.digits_task import DigitsTask

    return DigitsTask()


QUICK_EPOCHS = 20


@pytest.fixture(scope="session")
def quick_folds():
    """Search certification: fold baselines of the digits models train for QUICK_EPOCHS epochs, cached
    under their own key (the protocol is the same; the zoo's 100 epochs per fold would make every
    search test take a minute)."""
    import dataclasses

    from slimkit.zoo.registry import ZOO

    with pytest.MonkeyPatch.context() as mp:
        for name in ("lenet-300-100", "lenet5"):
            entry = ZOO[name]
            mp.setitem(ZOO, name, dataclasses.replace(entry, train_settings={**entry.train_settings,
                                                                             "epochs": QUICK_EPOCHS}))
        yield
