"""Local steps from the best candidate stay inside the search space and move it."""

from __future__ import annotations

import random

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from slimkit.autosearch.mutate import mutate

DISTS = {"sparsity": FloatDistribution(0.5, 0.985), "lr": FloatDistribution(3e-4, 5e-3, log=True),
         "bits": IntDistribution(2, 6), "epochs": IntDistribution(20, 80, step=20),
         "quant": CategoricalDistribution(["none", "kmeans", "rtn"])}
BEST = {"sparsity": 0.95, "lr": 0.002, "bits": 2, "epochs": 80, "quant": "kmeans"}


def test_steps_stay_in_their_distributions_and_move():
    rng = random.Random(0)
    steps = [mutate(BEST, DISTS, rng) for _ in range(300)]
    for step in steps:
        assert set(step) == set(BEST)
        for name, d in DISTS.items():
            assert d._contains(d.to_internal_repr(step[name])), (name, step[name])
    moved = sum(step != BEST for step in steps)
    assert moved >= 0.8 * len(steps)
    assert any(s["bits"] == 3 for s in steps) and any(s["epochs"] == 60 for s in steps)
    assert any(s["quant"] != "kmeans" for s in steps)
    assert abs(sum(s["sparsity"] for s in steps) / len(steps) - 0.95) < 0.02   # small steps around the best


def test_unknown_params_are_kept():
    assert mutate({"x": 1}, {}, random.Random(0)) == {"x": 1}
