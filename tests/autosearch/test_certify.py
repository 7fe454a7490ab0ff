"""Certification by cross-validation over the training split: the bounds, the folds (disjoint, the
test split untouched), the paired counts, early stopping, and the best needing a certificate."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.autosearch.certify import Certification, CrossValidation, certified, drop_bounds, mean_drop_bounds
from slimkit.autosearch.pareto import best_record
from slimkit.autosearch.trial import TrialRecord
from slimkit.zoo.digits import load_digits


def test_bounds_widen_with_discordance_and_narrow_with_images():
    low, high = drop_bounds(0, 0, 898, 0.9)
    assert low < 0 < high < 0.2                       # no discordant image still leaves a margin
    assert drop_bounds(5, 0, 898, 0.9)[1] > drop_bounds(2, 0, 898, 0.9)[1] > high
    assert drop_bounds(10, 10, 898, 0.9)[1] > drop_bounds(2, 2, 898, 0.9)[1]   # same drop, more noise
    assert drop_bounds(4, 0, 8980, 0.9)[1] < drop_bounds(4, 0, 898, 0.9)[1]
    assert drop_bounds(10, 10, 898, 0.95)[1] > drop_bounds(10, 10, 898, 0.9)[1]
    lo, hi = drop_bounds(12, 3, 898, 0.9)
    assert lo < (12 - 3) / 898 * 100 < hi
    assert drop_bounds(12, 3, 898, 0.9) == (lo, hi)   # deterministic


def test_outcomes_averaged_over_repeats_give_a_sharper_bound_only_when_they_spread():
    same = torch.cat([torch.ones(12), -torch.ones(3), torch.zeros(883)])
    assert mean_drop_bounds(same, 0.9) == drop_bounds(12, 3, 898, 0.9)       # one repeat: the same Dirichlet
    # 3 repeats, 36 lost / 9 gained outcomes: on the same images (a real loss) vs spread over images (noise)
    spread = torch.cat([torch.full((36,), 1 / 3), torch.full((9,), -1 / 3), torch.zeros(853)])
    assert mean_drop_bounds(spread, 0.9)[1] < drop_bounds(12, 3, 898, 0.9)[1]
    assert mean_drop_bounds(spread, 0.9)[0] < (12 - 3) / 898 * 100 < mean_drop_bounds(spread, 0.9)[1]
    assert mean_drop_bounds(torch.zeros(898), 0.9)[1] == drop_bounds(0, 0, 898, 0.9)[1] > 0   # still a margin


@pytest.mark.parametrize("options, message", [({"folds": 1}, "folds"), ({"confidence": 1.0}, "confidence"),
                                              ({"folds": True}, "folds"), ({"confidence": 0.2}, "confidence"),
                                              ({"repeats": 0}, "repeats"), ({"repeats": 1.5}, "repeats")])
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(sk.SlimError, match=message):
        Certification(**options)


@pytest.fixture(scope="module")
def cv(quick_folds, lenet_trained):
    return CrossValidation.for_model(lenet_trained, Certification(folds=3, confidence=0.9, repeats=1))


def test_folds_partition_the_training_split_and_never_see_test(cv):
    data = load_digits()

    def rows(x: torch.Tensor) -> list:
        return sorted(map(tuple, x.tolist()))

    train = rows(data.train.x)
    assert cv.images == len(data.train)
    assert rows(torch.cat([f.task.data.test.x for f in cv.folds])) == train     # each image held out once
    for fold in cv.folds:   # a fold trains on the rest of the training split: never on test or val images
        assert rows(torch.cat([fold.task.data.train.x, fold.task.data.test.x])) == train
        assert torch.equal(fold.task.data.val.x, data.val.x)          # epochs still chosen on validation
        assert fold.baseline.slimkit_base == {"kind": "zoo", "name": "lenet-300-100"}


def test_counts_are_paired_over_the_held_out_images(cv):
    stages = [sk.make_config("rtn", bits=4, granularity="channel")]
    cert = cv.certify(stages, max_drop=100.0, deadline=time.monotonic() + 300)
    lost = gained = 0
    for fold in cv.folds:
        model = sk.apply_(_copy(fold.baseline), stages[0], fold.task)
        with torch.no_grad():
            right = model(fold.task.data.test.x).argmax(1) == fold.task.data.test.y
        lost += int((fold.correct & ~right).sum())
        gained += int((~fold.correct & right).sum())
    assert (cert["lost"], cert["gained"], cert["images"], cert["folds"]) == (lost, gained, cv.images, 3)
    assert cert["drop_pts"] == pytest.approx((lost - gained) / cv.images * 100, abs=1e-3)
    assert cert["lcb_pts"] <= cert["drop_pts"] <= cert["ucb_pts"]
    assert certified(cert, 100.0) and certified(cert, cert["ucb_pts"]) and not certified(cert, cert["ucb_pts"] - 0.01)


def test_repeats_hold_each_image_out_once_per_partition_and_average_per_image(quick_folds, lenet_trained):
    cv2 = CrossValidation.for_model(lenet_trained, Certification(folds=2, confidence=0.9, repeats=2))
    n = len(load_digits().train)
    assert len(cv2.folds) == 4 and cv2.images == n and cv2.outcomes == 2 * n
    for first in (cv2.folds[:2], cv2.folds[2:]):
        assert sorted(torch.cat([f.held for f in first]).tolist()) == list(range(n))
    assert not torch.equal(cv2.folds[0].held, cv2.folds[2].held)           # another partition
    stages = [sk.make_config("rtn", bits=3, granularity="channel")]
    cert = cv2.certify(stages, max_drop=100.0, deadline=time.monotonic() + 300)
    total = torch.zeros(n)
    for fold in cv2.folds:
        model = sk.apply_(_copy(fold.baseline), stages[0], fold.task)
        with torch.no_grad():
            right = model(fold.task.data.test.x).argmax(1) == fold.task.data.test.y
        total[fold.held] += fold.correct.float() - right.float()
    assert (cert["folds"], cert["of"], cert["images"], cert["outcomes"], cert["repeats"]) == (4, 4, n, 2 * n, 2)
    assert cert["drop_pts"] == pytest.approx(float(total.mean()) / 2 * 100, abs=1e-3)
    assert (cert["lcb_pts"], cert["ucb_pts"]) == pytest.approx(mean_drop_bounds(total / 2, 0.9), abs=1e-3)


def test_a_hopeless_recipe_stops_after_one_fold(cv):
    stages = [sk.make_config("magnitude", sparsity=0.995, epochs=0)]
    cert = cv.certify(stages, max_drop=0.5, deadline=time.monotonic() + 300)
    assert cert["folds"] == 1 < cert["of"] and cert["lcb_pts"] > 0.5 and not certified(cert, 0.5)


def test_out_of_time_is_no_certificate_and_says_so(cv):
    cert = cv.certify([sk.make_config("rtn", bits=4)], max_drop=0.5, deadline=time.monotonic() - 1)
    assert cert["stopped"] == "time" and cert["folds"] == 0 and not certified(cert, 100.0)
    assert cert["reason"].startswith("certification ran out of time: 0 of 3 fold runs done")


def test_a_certification_that_would_not_fit_stops_before_the_first_fold(cv):
    cert = cv.certify([sk.make_config("rtn", bits=4)], max_drop=0.5, deadline=time.monotonic() + 5, run_s=10.0)
    assert cert["stopped"] == "time" and cert["folds"] == 0 and "needed about 30s" in cert["reason"]


def test_a_user_model_has_no_cross_validation():
    assert CrossValidation.for_model(nn.Sequential(nn.Linear(64, 10)), Certification()) is None


def test_best_needs_a_certificate_when_there_is_one():
    def rec(n, size, drop, ucb, folds=10):
        cert = {"folds": folds, "of": 10, "ucb_pts": ucb, "drop_pts": ucb - 0.3}
        return TrialRecord(n, {}, [], bytes=size, val_score=0.98, drop_pts=drop, certificate=cert)

    lucky = rec(0, 1000, 0.0, 0.9)          # within budget on validation, bound outside it
    partial = rec(1, 1200, 0.0, 0.3, folds=4)
    solid = rec(2, 3000, 0.0, 0.45)
    assert best_record([lucky, partial, solid], max_drop=0.5) is solid
    assert best_record([lucky, partial], max_drop=0.5) is None
    assert best_record([lucky, partial, solid], max_drop=1.0) is lucky
    one_image = rec(3, 2000, 0.56, 0.4)      # one validation image lost: within the screen's slack
    one_image.certificate["screen_slack_pts"] = 0.5587
    two_images = rec(4, 1500, 1.12, 0.3)
    two_images.certificate["screen_slack_pts"] = 0.5587
    assert best_record([solid, one_image, two_images], max_drop=0.5) is one_image
    assert one_image.worst_drop() == 0.4 and two_images.worst_drop() == pytest.approx(1.12 - 0.5587)


def _copy(model):
    from slimkit.autosearch.guide import fresh_copy

    return fresh_copy(model)
