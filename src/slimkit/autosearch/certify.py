"""Certifying a candidate's accuracy drop with more held-out images than the validation split has.

On digits the validation split has 179 images: one image is 0.56 pt, so a 0.5-pt budget judged on
it is a coin toss: the smallest candidate within budget on validation is often the one whose
validation noise was kindest. And the methods pick their best fine-tuning epoch on that split, so it
flatters every candidate a little (the runs behind this design: docs/notes/search-certification.md).

The protocol here is k-fold cross-validation over the training split, which never touches the test
split. For fold k a baseline is trained the way the zoo trained the original (same settings, epochs
chosen on the validation split) on the training split without fold k; the candidate's recipe is
applied to that baseline, fine-tuning on the same images, with its training seeds moved by k + 1;
both are scored on fold k, which neither has seen. Pooled over the folds, every training image is
held out once (898 paired outcomes on digits, 5x the validation split). A candidate is certified
when the one-sided upper confidence bound of its drop is within the budget: a Bayesian paired
bootstrap over the images (Dirichlet with Jeffreys' prior over "the candidate lost it / gained it /
both agree"), so that a lucky point estimate is not enough and zero counts still leave a margin.

Repeated cross-validation (`repeats`, 3 by default) runs the whole protocol again on other random
partitions of the training split (new fold baselines, other candidate seeds), so every image is held
out once per repeat. The paired outcome of an image (+1 lost, -1 gained, 0 agreed) is averaged over
its repeats and the bootstrap resamples *images*, not outcomes: the repeats of one image are not
counted as independent evidence. What they remove is training noise. Which near-boundary images a
compressed fold model disagrees on changes from run to run, so the mean over repeats has less
variance per image and the bound is sharper for the same quantity: the expected drop of the recipe.

>>> cv = CrossValidation.for_model(model, Certification(folds=10, confidence=0.9, repeats=3))
>>> cert = cv.certify(stages, max_drop=0.5, deadline=time.monotonic() + 120)
>>> cert["drop_pts"], cert["ucb_pts"], certified(cert, max_drop=0.5)
(-0.2227, 0.1307, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from slimkit.autosearch.budget import TimePlan, fmt_duration
from slimkit.autosearch.stages import OutOfTime, hard_deadline, reseeded, run_stages
from slimkit.core.errors import SlimError
from slimkit.core.methods import MethodConfig
from slimkit.core.provenance import tag
from slimkit.zoo.builtin import CACHE_VERSION
from slimkit.zoo.cache import cache_dir, load_cached, save_cached
from slimkit.zoo.digits import SPLIT_SEED, DigitsData, Split, load_digits
from slimkit.zoo.digits_task import DigitsTask
from slimkit.zoo.registry import ZOO, base_of
from slimkit.zoo.train import fit

FUTILITY = 0.25       # points: see CrossValidation._hopeless
DRAWS = 20000          # bootstrap draws: enough that the bound hardly depends on the draw's seed


@dataclass(frozen=True)
class Certification:
    """How candidates are certified: `folds` of the training split, and the one-sided confidence
    of the upper bound on the drop (0.9: a certified recipe loses more than the budget in at most
    1 of 10 cases, as far as the held-out images can tell).

    Ten folds, not five: fold baselines then train on 90% of the training images. With 80% they are
    weaker than the original, and fine-tuning candidates gain on them what they would not gain on
    the original (docs/notes/search-certification.md).

    `repeats` partitions of the training split into folds (see the module's docstring): each adds
    `folds` fold baselines (trained once, cached) and a run of the recipe per fold.

    >>> Certification(folds=10, confidence=0.9, repeats=3)
    Certification(folds=10, confidence=0.9, repeats=3)
    """

    folds: int = 10
    confidence: float = 0.9
    repeats: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or not 2 <= self.folds <= 20:
            raise SlimError(f"certification folds (--folds) must be an integer from 2 to 20, got {self.folds!r}")
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or not 0.5 <= c < 1:
            raise SlimError(f"certification confidence (--confidence) must be in [0.5, 1), got {c!r}")
        r = self.repeats
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 10:
            raise SlimError(f"certification repeats (--repeats) must be an integer from 1 to 10, got {r!r}")


def drop_bounds(lost: int, gained: int, n: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """(lower, upper) one-sided `confidence` bounds of the drop in points, from `n` paired images of
    which the candidate got `lost` wrong that the original got right and `gained` the other way.

    >>> drop_bounds(0, 0, 899, 0.9)[1] > 0          # no discordant image still leaves a margin
    True
    """
    if n <= 0:
        return -100.0, 100.0
    values = torch.cat([torch.ones(lost), -torch.ones(gained), torch.zeros(max(0, n - lost - gained))])
    return mean_drop_bounds(values, confidence, seed)


def mean_drop_bounds(values: torch.Tensor, confidence: float, seed: int = 0) -> tuple[float, float]:
    """(lower, upper) one-sided `confidence` bounds of the drop in points from per-image paired
    outcomes in [-1, 1] (+1: the candidate lost the image, -1: gained it; the mean over repeats where
    an image was held out several times): a Bayesian bootstrap over the images, with Jeffreys' half
    an image added at -1, 0 and +1 (with 0/1 outcomes this is the Dirichlet of `drop_bounds`).

    >>> mean_drop_bounds(torch.tensor([0.0] * 890 + [1 / 3] * 6 + [-1 / 3] * 2), 0.9)[1] < \
    ...     drop_bounds(6, 2, 898, 0.9)[1]        # the same outcomes spread over repeats: sharper
    True
    """

    if values.numel() == 0:
        return -100.0, 100.0
    levels, counts = torch.unique(values.double().mul(1e6).round().div(1e6), return_counts=True)
    weights = dict(zip(levels.tolist(), counts.double().tolist(), strict=True))
    for level in (-1.0, 0.0, 1.0):
        weights[level] = weights.get(level, 0.0) + 0.5
    keys = sorted(weights)
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([weights[k] for k in keys], size=DRAWS)
    diff = p @ np.array(keys) * 100
    return float(np.quantile(diff, 1 - confidence)), float(np.quantile(diff, confidence))


class FoldTask(DigitsTask):
    """The digits task with another training split (the rest of the folds); validation is unchanged
    (the methods choose epochs on it), and "test" is the held-out fold."""

    def __init__(self, data: DigitsData):
        self.data = data


class Fold:
    """One fold: its task (the held-out fold as "test"), and its baseline, trained as the zoo trains
    the model on the rest of the training split the first time it is needed (then cached)."""

    def __init__(self, entry, task: FoldTask, held: torch.Tensor, name: str):
        self.entry, self.task, self.held, self.name = entry, task, held, name
        self._baseline: nn.Module | None = None
        self._correct: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        """Whether the baseline is in memory or in the cache (no training needed)."""
        return self._baseline is not None or (cache_dir() / "zoo" / f"{self.name}.safetensors").is_file()

    def prepare(self, deadline: float | None = None) -> float:
        """Load or train the baseline; the seconds spent training (0.0 if it was cached). Training
        stops with `OutOfTime` at `deadline`."""
        if self._baseline is not None:
            return 0.0
        model = self.entry.build()
        base = dict(model.__dict__["slimkit_base"])
        state, trained = load_cached(self.name), 0.0
        if state is None:
            start = time.monotonic()
            torch.manual_seed(0)              # as the zoo trains the original
            model = self.entry.build()
            with hard_deadline(deadline):
                fit(model, self.task.data, seed=0, **self.entry.train_settings)
            save_cached(self.name, model.state_dict())
            trained = time.monotonic() - start
        else:
            model.load_state_dict(state)
        self._baseline = tag(model.eval(), base)
        self._correct = _correct(self._baseline, self.task.data.test)
        return trained

    @property
    def baseline(self) -> nn.Module:
        self.prepare()
        return self._baseline

    @property
    def correct(self) -> torch.Tensor:
        """Bool per held-out image: the fold's baseline got it right."""
        self.prepare()
        return self._correct


class CrossValidation:
    """Fold baselines of a builtin digits model (`repeats` x `folds` of them, repeat by repeat), and
    the certification of recipes on them."""

    def __init__(self, folds: list[Fold], settings: Certification):
        self.folds = folds
        self.settings = settings

    @property
    def screen_slack_pts(self) -> float:
        """Validation points a candidate may lose and still be certified: one image. On 179 images
        one image is 0.56 pt, so a 0.5-pt screen would demand no loss at all and turn away recipes
        whose cross-validated drop is well within the budget."""
        return round(100.0 / len(self.folds[0].task.data.val), 4)

    @property
    def images(self) -> int:
        """Distinct held-out images (the training split; each is held out once per repeat)."""
        return len(torch.unique(torch.cat([f.held for f in self.folds])))

    @property
    def outcomes(self) -> int:
        """Paired outcomes over all repeats (`images` x repeats)."""
        return sum(len(f.held) for f in self.folds)

    def describe(self) -> str:
        s, val = self.settings, len(self.folds[0].task.data.val)
        rounds = f"{s.repeats} x " if s.repeats > 1 else ""
        return (f"digits validation split ({val} images) to screen (budget + one image); certified by {rounds}"
                f"{s.folds}-fold cross-validation over the training split ({self.images} held-out images"
                f"{' per repeat, outcomes averaged per image' if s.repeats > 1 else ''}, fold baselines "
                f"retrained), {s.confidence:.0%} upper bound of the drop")

    @classmethod
    def for_model(cls, model: nn.Module, settings: Certification) -> CrossValidation | None:
        """Fold baselines for a builtin digits model (trained as the zoo trains it); None for any
        other model (its training recipe is unknown, so folds cannot be retrained)."""

        base = base_of(model)
        entry = ZOO.get(base.get("name", "")) if base.get("kind") == "zoo" else None
        if entry is None or not entry.train_settings or not isinstance(entry.task(), DigitsTask):
            return None

        data = load_digits()
        return cls([_fold(entry, data, held, settings.folds) for repeat in range(settings.repeats)
                    for held in _fold_indices(data.train.y, settings.folds, repeat)], settings)

    def uncached(self, start: int = 0) -> int:
        """Fold baselines from fold `start` on that still have to be trained (not in memory or cached)."""
        return sum(not f.ready for f in self.folds[start:])

    def certify(self, model_stages: list[MethodConfig], max_drop: float, deadline: float,
                run_s: float | None = None, plan: TimePlan | None = None) -> dict:
        """Run the recipe on every fold baseline; the drop averaged per image and its bounds.

        Stops early (then `folds` < `of`, and `stopped` says why) once the budget is out of reach
        (`"futile"`, see `_hopeless`), when the rest would not end by `deadline` (`"time"`: projected
        from `run_s`, the seconds the candidate's own run took, and from the fold runs and fold
        baselines measured so far, which `plan` records), or when a method fails on a fold (`"error"`).
        Fold baselines are trained here, on first use, and cached."""
        start = time.monotonic()
        size = int(torch.cat([f.held for f in self.folds]).max()) + 1
        total, seen = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
        counts = {"lost": 0, "gained": 0, "done": 0}
        runs: list[float] = []

        def result(stopped: str | None = None, reason: str | None = None) -> dict:
            held = seen > 0
            per_image = total[held] / seen[held]
            low, high = mean_drop_bounds(per_image, self.settings.confidence) if held.any() else (None, None)
            return {"folds": counts["done"], "of": len(self.folds), "images": int(per_image.numel()),
                    "lost": counts["lost"], "gained": counts["gained"], "outcomes": int(seen.sum()),
                    "repeats": self.settings.repeats,
                    "drop_pts": round(float(per_image.mean()) * 100, 4) if held.any() else None,
                    "ucb_pts": None if high is None else round(high, 4),
                    "lcb_pts": None if low is None else round(low, 4), "confidence": self.settings.confidence,
                    "stopped": stopped, "reason": reason, "seconds": round(time.monotonic() - start, 2)}

        for k, fold in enumerate(self.folds):
            need = self._projected(k, runs, run_s, plan)
            if time.monotonic() + need > deadline:
                return result("time", _out_of_time(k, len(self.folds), need, deadline))
            stages = reseeded(model_stages, offset=k + 1) or model_stages
            try:
                trained = fold.prepare(deadline)
                if trained and plan is not None:
                    plan.add("fold_fit", trained)
                t = time.monotonic()
                net = run_stages(fold.baseline, stages, fold.task, deadline)
            except OutOfTime:
                return result("time", _out_of_time(k, len(self.folds), self._projected(k, runs, run_s, plan),
                                                   deadline))
            except Exception as exc:   # a method that refuses a fold's model: not certified
                first = str(exc).splitlines()[0] if str(exc) else ""
                return result("error", f"certification failed on fold {k + 1}: {type(exc).__name__}: {first}"[:300])
            right = _correct(net, fold.task.data.test)
            runs.append(time.monotonic() - t)
            if plan is not None and run_s:
                plan.add("fold_ratio", runs[-1] / run_s)
            total[fold.held] += (fold.correct.double() - right.double())
            seen[fold.held] += 1
            counts["lost"] += int((fold.correct & ~right).sum())
            counts["gained"] += int((~fold.correct & right).sum())
            counts["done"] += 1
            if counts["done"] < len(self.folds) and self._hopeless(total, seen, counts["lost"], counts["gained"],
                                                                   max_drop):
                return result("futile", None)
        return result()

    def _projected(self, k: int, runs: list[float], run_s: float | None, plan: TimePlan | None) -> float:
        """Seconds the fold runs from fold `k` on are expected to take (0 when nothing is known)."""
        if runs:
            per_run = sorted(runs)[len(runs) // 2]
        elif run_s is None:
            return 0.0
        else:
            per_run = plan.fold_run_s(run_s) if plan is not None else run_s
        per_fit = plan.typical("fold_fit", per_run) if plan is not None else per_run
        return (len(self.folds) - k) * per_run + self.uncached(k) * per_fit

    def _hopeless(self, total: torch.Tensor, seen: torch.Tensor, lost: int, gained: int, max_drop: float) -> bool:
        """Stop early: the lower bound is already outside the budget, or (after half of the fold
        runs) the upper bound projected to all outcomes at the rates seen so far, counting outcomes
        as independent (narrower than the certificate's bound: a stop only on clear futility), is
        more than FUTILITY points outside it."""
        conf = self.settings.confidence
        if mean_drop_bounds(total[seen > 0] / seen[seen > 0], conf)[0] > max_drop:
            return True
        n = int(seen.sum())
        if 2 * n < self.outcomes:
            return False
        scale = self.outcomes / n
        return drop_bounds(round(lost * scale), round(gained * scale), self.outcomes, conf)[1] > max_drop + FUTILITY


def certified(cert: dict | None, max_drop: float) -> bool:
    """True if `cert` covers every fold and its upper bound is within `max_drop` points."""
    return cert is not None and cert["folds"] == cert["of"] and cert["ucb_pts"] <= max_drop + 1e-9


@torch.no_grad()
def _correct(model: nn.Module, split: Split) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x).argmax(1) for x in split.x.split(512)]) == split.y


def _fold_indices(y: torch.Tensor, folds: int, repeat: int = 0) -> list[torch.Tensor]:
    """Stratified folds of the training split (fixed seeds: the same folds in every search; each
    repeat partitions with the next seed)."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SPLIT_SEED + repeat)
    return [torch.from_numpy(held) for _, held in splitter.split(y.numpy().reshape(-1, 1), y.numpy())]


def _fold(entry, data: DigitsData, held: torch.Tensor, folds: int) -> Fold:
    """Fold `held`'s task; its baseline (trained as the zoo trains `entry`, cached beside the zoo's own
    weights, keyed on the fold and the training settings) comes on first use."""

    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[held] = False
    rest = Split(data.train.x[keep], data.train.y[keep])
    fold = FoldTask(DigitsData(rest, data.val, Split(data.train.x[held], data.train.y[held]), data.image_shape))
    key = hashlib.sha256(json.dumps([entry.train_settings, held.tolist()], sort_keys=True).encode()).hexdigest()
    return Fold(entry, fold, held, f"{entry.name}-{CACHE_VERSION}-cv{folds}-{key[:16]}")


def _out_of_time(k: int, of: int, need: float, deadline: float) -> str:
    left = max(0.0, deadline - time.monotonic())
    return (f"certification ran out of time: {k} of {of} fold runs done; the rest needed about "
            f"{fmt_duration(need)}, {fmt_duration(left)} of the time budget was left")
