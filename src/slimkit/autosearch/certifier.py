"""Certifying candidates inside the time budget, and keeping room for it.

A candidate that would become the best (the smallest within the screen: the budget, plus one image
on digits) is certified at once if the time left allows: by cross-validation where the search has it
(`slimkit.autosearch.certify`), else by a second run with other training seeds. What that costs is
measured, not assumed: a fold run costs about what the candidate's own run cost (scaled by what fold
runs have cost so far), a fold baseline still to train what the first ones cost. A certification
that does not fit is not started, and the candidate says why; one that runs out of time stops
where it is. The fold baselines every certification needs are trained between candidates, one at a
time, from the first candidate within the screen on (`prepare_folds`). The search starts a new
candidate only while a typical one and its certification both still fit, so that the last best
found can be certified.

>>> certifier = Certifier(net, work, score, budget, cv, plan)
>>> certifier.certify_open(records)          # the smallest open candidates first
>>> certifier.room_for_candidate(records)
True
"""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import nn

from slimkit.autosearch.budget import TimePlan
from slimkit.autosearch.certify import CrossValidation
from slimkit.autosearch.outcome import no_time_note, pending
from slimkit.autosearch.pareto import best_record
from slimkit.autosearch.stages import OutOfTime
from slimkit.autosearch.trial import Budget, TrialRecord, confirm_drop
from slimkit.core.methods import make_config
from slimkit.core.task import Task


class Certifier:
    """Certifies the candidates of one search call within its `TimePlan`."""

    def __init__(self, net: nn.Module, task: Task, score: Callable[[nn.Module], float], budget: Budget,
                 cv: CrossValidation | None, plan: TimePlan):
        self.net, self.task, self.score, self.budget, self.cv, self.plan = net, task, score, budget, cv, plan
        self.tried: set[int] = set()          # certified (or tried) by this call: not tried again

    @property
    def slack(self) -> float:
        """Validation points the screen allows beyond the budget (one image with cross-validation)."""
        return self.cv.screen_slack_pts if self.cv is not None else 0.0

    def cost(self, run_s: float) -> float:
        """Expected seconds to certify a candidate whose own run took `run_s`."""
        if self.cv is not None:
            return self.plan.certify_s(len(self.cv.folds), self.cv.uncached(), run_s)
        return self.plan.fold_run_s(run_s)

    def certify_open(self, records: list[TrialRecord]) -> None:
        """Certify open candidates smaller than the certified best, smallest first, while each one's
        certification fits in the time left; stop at the first one certified."""
        max_drop = self.budget.max_drop
        best = best_record(records, max_drop)
        for rec in sorted((r for r in records if r.measured), key=lambda r: (r.bytes, r.number)):
            if best is not None and rec.bytes >= best.bytes:
                break
            if rec.number in self.tried or not pending(rec, max_drop, self.slack):
                continue
            need, left = self.cost(rec.seconds), self.plan.left()
            if need > left:
                if rec.certificate is None:
                    rec.cert_stopped, rec.cert_note = "time", no_time_note(need, left)
                continue
            self.tried.add(rec.number)
            self.certify(rec)
            if rec.confirmed(max_drop):
                return

    def certify(self, rec: TrialRecord) -> None:
        """Certify `rec` now (until `work_end` at the latest); the result goes into the record."""
        stages = [make_config(**stage) for stage in rec.stages]
        start = time.monotonic()
        if self.cv is not None:
            cert = self.cv.certify(stages, self.budget.max_drop, self.plan.work_end, run_s=rec.seconds,
                                   plan=self.plan)
            cert["screen_slack_pts"] = self.slack
            rec.certificate, rec.cert_stopped, rec.cert_note = cert, None, None
        else:
            confirm_drop(self.net, stages, self.task, self.score, self.budget, rec)
        rec.cert_seconds = round(rec.cert_seconds + time.monotonic() - start, 3)

    def prepare_folds(self, records: list[TrialRecord]) -> None:
        """Train the next fold baseline (cross-validated searches), once a candidate within the
        screen exists, while all those still to train fit in the time left: every certification
        needs them, and one that must first train them all rarely fits when it is needed. One per
        candidate, so that the search keeps exploring meanwhile; none when they cannot all fit
        (nothing could be certified in this budget, and exploring is the better use of it)."""
        cv = self.cv
        if cv is None or not any(r.feasible(self.budget.max_drop + self.slack) for r in records):
            return
        todo = [f for f in cv.folds if not f.ready]
        per_fit = self.plan.typical("fold_fit", self.plan.typical("candidate"))
        if not todo or per_fit is None or len(todo) * per_fit > self.plan.left():
            return
        try:
            trained = todo[0].prepare(self.plan.work_end)
        except OutOfTime:
            return
        if trained:
            self.plan.add("fold_fit", trained)

    def room_for_candidate(self, records: list[TrialRecord]) -> bool:
        """Whether to start another candidate: the first one always (it stops at `work_end` if it
        must); later ones while a typical candidate and its certification both fit. When no
        certification fits any more, a search that has nothing certified goes on exploring: its best
        uncertified candidate is what best.slim will hold."""
        left = self.plan.left()
        typical = self.plan.typical("candidate")
        if left <= 0 or typical is None:
            return left > 0
        if typical + self.cost(typical) <= left:
            return True
        return best_record(records, self.budget.max_drop) is None and typical <= left
