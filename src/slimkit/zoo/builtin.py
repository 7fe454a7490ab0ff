"""The embedded defaults: lenet-300-100 and lenet5 on digits (trained on first use, cached)."""

from __future__ import annotations

from slimkit.zoo.digits_task import DigitsTask
from slimkit.zoo.lenet import LeNet5, LeNet300100
from slimkit.zoo.registry import ZooEntry, register, tag, trained_digits_model

CACHE_VERSION = "v1"


def _digits_task():

    return DigitsTask()


def _entry(name: str, cls, description: str, **fit_kwargs) -> ZooEntry:
    base = {"kind": "zoo", "name": name}
    return register(ZooEntry(
        name=name,
        description=description,
        build=lambda: tag(cls(), base),
        load=lambda: tag(trained_digits_model(f"{name}-{CACHE_VERSION}", cls, **fit_kwargs), base),
        task=_digits_task,
        train_settings=dict(fit_kwargs),
    ))


_entry("lenet-300-100", LeNet300100, "MLP 64-300-100-10 on 8x8 digits (50,610 params)",
       epochs=100, batch_size=32, lr=2e-3)
_entry("lenet5", LeNet5, "LeNet-5-style CNN (conv-BN-pool x2, fc x3) on 1x8x8 digits",
       epochs=60, batch_size=64, lr=2e-3)
