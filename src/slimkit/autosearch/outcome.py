"""What best.slim holds, and why: a search always answers.

best.slim is the smallest certified candidate. When none could be certified, it is still written,
with the best candidate the search has and the reason it is not certified:

1. the smallest candidate within the budget on validation whose certification did not refute it
   (it ran out of time, or there was no time to start it);
2. else the one of those whose certificate came closest (its bound above the budget);
3. else the candidate that lost least on validation (outside the budget: the CLI exits with 3);
4. else, when no candidate finished at all, the original model, stored as .slim.

>>> outcome = choose(records, max_drop=0.5)
>>> outcome.certified, outcome.reason
(False, 'certification ran out of time: 12 of 30 fold runs done; ...')
"""

from __future__ import annotations

from dataclasses import dataclass

from slimkit.autosearch.budget import fmt_duration
from slimkit.autosearch.certify import certified
from slimkit.autosearch.pareto import best_record
from slimkit.autosearch.trial import TrialRecord

NO_CANDIDATE = ("no candidate finished within the time budget: best.slim holds the original model, "
                "uncompressed (give a longer --budget, or run the same command again to continue)")


@dataclass(frozen=True)
class Outcome:
    """The candidate in best.slim (None: the original) and its standing."""

    record: TrialRecord | None
    certified: bool
    within_budget: bool            # on validation, strictly within max_drop
    reason: str | None = None      # why it is not certified (None when it is)

    def to_dict(self) -> dict:
        return {"trial": None if self.record is None else self.record.number, "certified": self.certified,
                "within_budget": self.within_budget, "reason": self.reason}


def choose(records: list[TrialRecord], max_drop: float) -> Outcome:
    """The outcome of a search over `records` (see the module)."""
    best = best_record(records, max_drop)
    if best is not None:
        return Outcome(best, True, True)
    measured = [r for r in records if r.measured and r.path]
    within = [r for r in measured if r.feasible(max_drop)]
    open_ = [r for r in within if not refuted(r, max_drop)]
    if open_:
        rec = min(open_, key=lambda r: (r.bytes, r.number))
        return Outcome(rec, False, True, why_not(rec, max_drop))
    if within:
        rec = min(within, key=lambda r: (r.worst_drop() if r.worst_drop() is not None else 100.0, r.bytes))
        return Outcome(rec, False, True, why_not(rec, max_drop))
    if measured:
        rec = min(measured, key=lambda r: (r.drop_pts, r.bytes))
        reason = (f"no candidate kept the validation score within {max_drop:g} points: this one, the closest, "
                  f"lost {rec.drop_pts:.2f}")
        if rec.certificate is not None or rec.cert_note:     # within the screen: certification could decide
            reason += f" (one image more: certification could still accept it, but {why_not(rec, max_drop)})"
        return Outcome(rec, False, False, reason)
    return Outcome(None, False, True, NO_CANDIDATE)


def refuted(rec: TrialRecord, max_drop: float) -> bool:
    """Its certification ended without certifying it: the bound above the budget, stopped as
    futile, a failed run, or a second run outside the budget."""
    cert = rec.certificate
    if cert is not None:
        return cert.get("stopped") in ("futile", "error") or (cert.get("stopped") is None
                                                              and not certified(cert, max_drop))
    if rec.cert_stopped == "error":
        return True
    return rec.confirm_drop_pts is not None and rec.confirm_drop_pts > max_drop + 1e-9


def pending(rec: TrialRecord, max_drop: float, slack: float) -> bool:
    """Within the screen (`max_drop` + `slack` on validation) and its certification still open:
    never started, or stopped by the clock."""
    if not rec.feasible(max_drop + slack):
        return False
    if rec.certificate is not None:
        return rec.certificate.get("stopped") == "time"
    return rec.confirm_drop_pts is None and rec.cert_stopped in (None, "time")


def why_not(rec: TrialRecord, max_drop: float) -> str:
    """One line: why `rec` is not certified."""
    cert = rec.certificate
    if cert is not None:
        if cert.get("reason"):
            return cert["reason"]
        if cert.get("stopped") == "futile":
            return (f"certification stopped early: after {cert['folds']} of {cert['of']} fold runs the drop "
                    f"could no longer be bounded within {max_drop:g} points")
        if cert.get("ucb_pts") is not None:
            return (f"cross-validated upper bound of the drop {cert['ucb_pts']:.2f} pt is above the budget of "
                    f"{max_drop:g}")
    if rec.cert_note:
        return rec.cert_note
    if rec.confirm_drop_pts is not None:
        return f"a second run with other training seeds lost {rec.confirm_drop_pts:.2f} pt, more than {max_drop:g}"
    return "its certification was not started"


def no_time_note(need: float, left: float, what: str = "certification") -> str:
    """The reason a certification was not started."""
    return (f"{what} was not started: it needed about {fmt_duration(need)}, "
            f"{fmt_duration(max(0.0, left))} of the time budget was left")


def standing(point: dict) -> str:
    """A measured candidate (a `pareto.points` row) in words, the same everywhere."""
    if point.get("confirmed"):
        return "certified"
    if point.get("within_budget"):
        return "within the budget on validation, not certified"
    return "outside the budget"


def status(final: dict) -> str:
    """best.slim's standing in words: `certified`, or `NOT certified: <reason>`."""
    return "certified" if final.get("certified") else f"NOT certified: {final.get('reason')}"
