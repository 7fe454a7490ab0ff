"""The time budget: one duration parser for the CLI and Python, the plan's measured reserves, the
hard stop inside a stage, and what best.slim holds when nothing could be certified."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest

import slimkit as sk
from slimkit.autosearch.budget import TimePlan, fmt_duration, parse_duration
from slimkit.autosearch.outcome import NO_CANDIDATE, choose, pending
from slimkit.autosearch.stages import OutOfTime, hard_deadline
from slimkit.autosearch.trial import TrialRecord


@pytest.mark.parametrize("value, seconds", [("90s", 90), ("20m", 1200), ("1h", 3600), ("1h30m", 5400),
                                            ("2.5m", 150), (" 20M ", 1200), ("1m 30s", 90), (90, 90), (1.5, 1.5),
                                            (timedelta(minutes=2), 120)])
def test_durations_parse_to_seconds(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value, message", [
    ("20", "needs a unit, got '20': write 20m for minutes or 20s for seconds"),
    ("0s", "must be a positive duration"), ("0", "must be a positive duration"), (0, "must be a positive duration"),
    (-5, "must be a positive duration"), (float("nan"), "must be a positive duration"),
    (float("inf"), "must be a positive duration"), ("-5m", "must be a duration like 90s, 20m or 1h"),
    ("soon", "must be a duration like 90s, 20m or 1h"), ("", "must be a duration like"), ("20 minutes", "like 90s"),
    ("9" * 200, "like 90s"), ("200h", "at most a week"), (True, "got bool"), (None, "got NoneType"),
])
def test_bad_durations_are_one_line_errors(value, message):
    with pytest.raises(sk.SlimError, match="^budget \\(--budget\\) ") as err:
        parse_duration(value)
    assert message in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 160


def test_durations_print_as_they_are_written():
    assert [fmt_duration(s) for s in (7.4, 60, 150, 3600, 3900, 5400)] == ["7s", "1m", "2m30s", "1h", "1h05m", "1h30m"]
    assert parse_duration(fmt_duration(5400)) == 5400


def test_the_plan_reserves_what_was_measured():
    plan = TimePlan(600.0, finish_s=20.0)
    assert plan.work_end == pytest.approx(plan.started + 580.0) and 579 < plan.left() <= 580
    assert plan.typical("candidate") is None and plan.typical("candidate", 3.0) == 3.0
    for s in (2.0, 3.0, 4.0, 30.0):
        plan.add("candidate", s)
    assert 4.0 <= plan.typical("candidate") < 30.0           # the upper quartile, not the outlier
    assert plan.certify_s(runs=10, uncached=0, run_s=2.0) == 20.0   # a fold run costs what the candidate did
    plan.add("fold_ratio", 1.5)
    plan.add("fold_fit", 4.0)
    assert plan.certify_s(runs=10, uncached=5, run_s=2.0) == pytest.approx(10 * 3.0 + 5 * 4.0)
    assert plan.room_for(100.0) and not plan.room_for(1000.0)


def test_a_stage_is_stopped_at_the_deadline_and_the_signal_restored():
    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(OutOfTime), hard_deadline(start + 0.3):
        while time.monotonic() - start < 5:
            pass
    assert time.monotonic() - start < 1.0
    assert signal.getsignal(signal.SIGALRM) == before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with hard_deadline(time.monotonic() + 5):      # a block that ends in time is not disturbed
        pass
    with pytest.raises(OutOfTime):
        with hard_deadline(time.monotonic() - 1):
            pass


def _rec(n, size, drop, cert=None, **fields):
    return TrialRecord(n, {}, [{"method": "rtn", "bits": 4}], bytes=size, val_score=0.98, drop_pts=drop,
                       path=f"trials/{n:04d}.slim", certificate=cert, **fields)


def _cert(ucb, folds=10, stopped=None, reason=None):
    return {"folds": folds, "of": 10, "ucb_pts": ucb, "drop_pts": ucb - 0.3, "stopped": stopped, "reason": reason}


def test_best_slim_is_the_certified_best_else_the_best_open_candidate_with_its_reason():
    late = "certification ran out of time: 4 of 10 fold runs done; ..."
    certified = _rec(0, 3000, 0.0, _cert(0.4))
    refuted = _rec(1, 1000, 0.0, _cert(0.9))
    timed_out = _rec(2, 2000, 0.0, _cert(0.3, folds=4, stopped="time", reason=late))
    never = _rec(3, 2500, 0.2, cert_stopped="time",
                 cert_note="certification was not started: it needed about 2m, 40s of the time budget was left")
    got = choose([certified, refuted, timed_out, never], 0.5)
    assert got.record is certified and got.certified and got.reason is None
    got = choose([refuted, timed_out, never], 0.5)
    assert got.record is timed_out and not got.certified and got.within_budget and got.reason == late
    got = choose([refuted, never], 0.5)
    assert got.record is never and "was not started" in got.reason
    got = choose([refuted], 0.5)               # refuted by its bound: kept, and the reason is the bound
    assert got.record is refuted and "upper bound of the drop 0.90 pt is above the budget of 0.5" in got.reason
    outside = _rec(4, 900, 3.2)
    got = choose([outside, _rec(5, 800, 7.0)], 0.5)
    assert got.record is outside and not got.within_budget and "lost 3.20" in got.reason
    got = choose([], 0.5)
    assert got.record is None and got.reason == NO_CANDIDATE and got.to_dict()["trial"] is None
    assert pending(timed_out, 0.5, 0.0) and pending(never, 0.5, 0.0) and not pending(refuted, 0.5, 0.0)
    assert not pending(outside, 0.5, 0.56)


def test_candidates_train_with_fewer_threads_on_a_busy_machine(monkeypatch):
    from slimkit.autosearch import budget

    monkeypatch.setattr(budget.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(budget.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert budget.fair_threads(2) == 2                         # idle: all of torch's threads
    monkeypatch.setattr(budget.os, "getloadavg", lambda: (2.2, 2.0, 2.0))
    assert budget.fair_threads(2, running=2) == 2              # the load is our own last candidate
    assert budget.fair_threads(2) == 1                         # two other busy processes: one thread
    monkeypatch.setattr(budget.os, "getloadavg", lambda: (12.0, 9.0, 8.0))
    assert budget.fair_threads(2, running=1) == 1              # never fewer than one


def test_fold_baselines_are_trained_between_candidates_while_all_of_them_fit():
    from slimkit.autosearch.certifier import Certifier
    from slimkit.autosearch.trial import Budget

    class Fold:
        def __init__(self):
            self.ready = False

        def prepare(self, deadline):
            self.ready = True
            return 2.0

    class CV:
        screen_slack_pts = 0.56
        folds = [Fold() for _ in range(4)]

    plan = TimePlan(60.0)
    plan.add("candidate", 1.0)
    certifier = Certifier(None, None, None, Budget(0.98, 0.5, plan.work_end, 1.5), CV(), plan)
    outside = _rec(0, 1000, 3.0)
    certifier.prepare_folds([outside])                   # no candidate within the screen yet: none trained
    assert not any(f.ready for f in CV.folds)
    certifier.prepare_folds([outside, _rec(1, 2000, 0.3)])
    assert [f.ready for f in CV.folds] == [True, False, False, False] and plan.costs["fold_fit"] == [2.0]
    plan.budget_s = plan.elapsed() + 5.0                  # 3 left at 2 s each no longer fit in the time left
    certifier.prepare_folds([_rec(1, 2000, 0.3)])
    assert sum(f.ready for f in CV.folds) == 1
