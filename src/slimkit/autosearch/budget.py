"""The search's time budget: one parser for durations, and a plan that keeps the whole call inside it.

A budget is a duration string, the same on the command line and in Python: `90s`, `20m`, `1h`,
`1h30m`, `2.5m`. In Python a plain number is also accepted and means seconds (a
`datetime.timedelta` too); a string always needs its unit, so `--budget 20` is an error that says
so rather than a silent 20 seconds.

>>> parse_duration("20m"), parse_duration("1h30m"), parse_duration(90)
(1200.0, 5400.0, 90.0)
>>> fmt_duration(5400.0)
'1h30m'

`TimePlan` is the clock of one search call. Everything it reserves is measured on this machine,
under its current load: what a candidate took, what a fold run and a fold baseline of the
certification took, what measuring the original and drawing a plot took. Candidates and
certification stop at `work_end`, early enough that finishing (the test scores, best.slim, the
report) ends by `end`, the budget.

>>> plan = TimePlan(parse_duration("20m"))
>>> plan.add("candidate", 3.4); plan.certify_s(runs=30, uncached=0, run_s=3.4)
102.0
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import timedelta

from slimkit.core.errors import SlimError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_S = 7 * 24 * 3600.0          # a week: anything longer is a typo
_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[hms])+")


def parse_duration(value: str | int | float | timedelta, what: str = "budget (--budget)") -> float:
    """Seconds in `value`: a string of numbers with units (`90s`, `20m`, `1h`, `1h30m`), a
    `timedelta`, or (Python only) a number of seconds. Anything else is a one-line `SlimError`.

    >>> parse_duration("1.5h")
    5400.0
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if len(text) > 32:
            raise SlimError(f"{what} must be a duration like 90s, 20m or 1h, got {value[:32]!r}...")
        if re.fullmatch(r"\d+(\.\d+)?", text):            # a number without its unit
            if float(text) > 0:
                raise SlimError(f"{what} needs a unit, got {value!r}: write {text}m for minutes or {text}s for seconds")
            seconds = 0.0
        elif _WHOLE.fullmatch(text):
            seconds = sum(float(n) * UNITS[u] for n, u in _PART.findall(text))
        else:
            raise SlimError(f"{what} must be a duration like 90s, 20m or 1h, got {value!r}")
    else:
        raise SlimError(f"{what} must be a duration like 90s, 20m or 1h (or seconds in Python), "
                        f"got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise SlimError(f"{what} must be a positive duration, got {value!r}")
    if seconds > MAX_S:
        raise SlimError(f"{what} must be at most a week (168h), got {value!r}")
    return seconds


def fmt_duration(seconds: float) -> str:
    """`45s`, `2m30s`, `1h05m`: the way budgets are written, rounded to the second.

    >>> fmt_duration(150), fmt_duration(3900), fmt_duration(7.4)
    ('2m30s', '1h05m', '7s')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    return f"{s // 3600}h" + (f"{s % 3600 // 60:02d}m" if s % 3600 // 60 else "")


@dataclass
class TimePlan:
    """The clock of one search call and the measured costs that plan it (seconds; see the module).

    `finish_s` is reserved at the end: what finishing is expected to take, from the costs measured
    when the original was scored and its Pareto plot drawn."""

    budget_s: float
    started: float = field(default_factory=time.monotonic)
    finish_s: float = 0.0
    costs: dict[str, list[float]] = field(default_factory=dict)

    @property
    def end(self) -> float:
        """`time.monotonic()` at which the call should have returned."""
        return self.started + self.budget_s

    @property
    def work_end(self) -> float:
        """No candidate or certification runs past this: the rest is for finishing."""
        return self.end - self.finish_s

    def left(self) -> float:
        """Seconds until `work_end`."""
        return self.work_end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, kind: str, seconds: float) -> None:
        """Record that one `kind` of work (candidate, fold_run, fold_fit, ...) took `seconds`."""
        self.costs.setdefault(kind, []).append(float(seconds))

    def typical(self, kind: str, default: float | None = None) -> float | None:
        """What the next `kind` is expected to take: the upper quartile of those measured (candidates
        differ widely: a 120-epoch distillation next to a post-training quantization)."""
        seen = self.costs.get(kind)
        if not seen:
            return default
        if len(seen) < 4:
            return max(seen)
        return statistics.quantiles(seen, n=4)[2]

    def fold_run_s(self, run_s: float) -> float:
        """Expected seconds of one fold run of a candidate whose own run took `run_s`: scaled by the
        ratio fold runs have shown to their candidates' runs so far (1.0 before any)."""
        ratios = self.costs.get("fold_ratio")
        return run_s * (statistics.median(ratios) if ratios else 1.0)

    def certify_s(self, runs: int, uncached: int, run_s: float) -> float:
        """Expected seconds of a certification: `runs` runs of a recipe whose own run took `run_s`,
        and `uncached` fold baselines still to train (each as long as the ones trained so far, or,
        before any, as a run)."""
        per_run = self.fold_run_s(run_s)
        return runs * per_run + uncached * (self.typical("fold_fit", per_run) or per_run)

    def room_for(self, seconds: float) -> bool:
        """Whether `seconds` of work still fit before `work_end`."""
        return seconds <= self.left()


def fair_threads(threads: int, running: int = 0) -> int:
    """Torch threads for the next candidate: `threads` (what torch would use), cut to the cores the
    rest of the machine leaves free, and at least one. `running` is how many threads this process
    kept busy over the last minute (they count in the load average too).

    On an oversubscribed machine torch's threads spin waiting for each other: a LeNet candidate that
    takes 4 s took 430 s with two threads on two cores busy with other work.

    >>> fair_threads(2)      # on an idle 2-core machine
    2
    """
    if not hasattr(os, "getloadavg"):
        return threads
    others = max(0.0, os.getloadavg()[0] - running)
    return max(1, min(threads, math.floor((os.cpu_count() or 1) - others + 0.5)))
