"""A candidate becomes the best only if a second run with other training seeds is within budget too."""

from __future__ import annotations

import slimkit as sk
from slimkit.autosearch.pareto import best_record
from slimkit.autosearch.stages import reseeded
from slimkit.autosearch.trial import TrialRecord


def test_reseeded_moves_every_training_seed():
    stages = [sk.make_config("magnitude", sparsity=0.9, seed=3), sk.make_config("int8")]
    again = reseeded(stages)
    assert again is not None and again[0].seed == 4 and again[0].sparsity == 0.9 and again[1] == stages[1]
    assert reseeded([sk.make_config("int8")]) is None       # deterministic: nothing to confirm


def test_best_needs_a_confirmed_second_run():
    def rec(n, size, drop, again):
        return TrialRecord(n, {}, [], bytes=size, val_score=0.98, drop_pts=drop, confirm_drop_pts=again)

    lucky = rec(0, 1000, 0.0, 2.2)       # smallest, but its second run lost 2.2 points
    unchecked = rec(1, 1500, 0.0, None)
    solid = rec(2, 3000, 0.0, 0.4)
    outside = rec(3, 500, 1.1, 0.0)
    assert best_record([lucky, unchecked, solid, outside], max_drop=0.5) is solid
    assert best_record([lucky, outside], max_drop=0.5) is None
    assert best_record([lucky, outside], max_drop=2.5) is outside
