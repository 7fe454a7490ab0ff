"""The benchmark cases: builtin:minilm, lenet-300-100 and lenet5, each with its peers and every
shipped slimkit recipe that is implemented and applicable.

A recipe's artifact is really saved to a .slim file, loaded back with `slimkit.load`, and the
loaded model is what gets scored and timed. A recipe whose methods are not registered yet is a
row reading "not yet implemented"; one that fails or runs past its time limit says so.

On digits, one training run's accuracy varies by 0.2-0.6 pt from seed to seed, so a digits case
also repeats every candidate on baselines trained with other seeds (while its time budget
lasts) and reports the accuracy change against the *same-seed* baseline as mean +- sd; bytes and
latency are those of the seed-0 artifact (the zoo model).

>>> case = run_case(CASES["lenet-300-100"], RunOptions(quick=True), deadline=time.monotonic() + 60)
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from bench import artifacts
from bench.decode_case import run_decode_case
from bench.harness import (
    BASELINE,
    FULL,
    NOT_IMPLEMENTED,
    QUICK,
    Candidate,
    TimeBudgetExceeded,
    case_result,
    time_candidates,
    time_limit,
)
from bench.hashed_case import run_hashed_case
from bench.lm_decode_case import run_lm_decode_case
from bench.lowrank_case import run_lowrank_case
from bench.machine import compute_pass, machine_info
from bench.peers import SPEED_PEERS, build_peers
from bench.runtime_report import record_runtime
from bench.stream_case import run_stream_case


def _other_text_task():
    from slimkit.zoo.minilm import minilm_task

    return minilm_task("other")


@dataclass(frozen=True)
class CaseSpec:
    """One model to benchmark, the recipes to try on it, and its share of the time budget."""

    name: str
    recipes: tuple[str, ...]
    batch: int
    weight: float              # share of the run's time budget, relative to the other cases
    recipe_timeout_s: float    # per recipe, full run (a --quick run uses the remaining budget)
    reserve_s: float           # kept back for timing at the end of the case (full run)
    batch_note: str = ""
    all_shipped: bool = False  # also try shipped recipes not listed (unless `models:` excludes us)
    seeds: int = 1             # baselines trained with seeds 0..seeds-1 (full run; digits only)
    second_score: tuple[str, Callable] | None = None   # (label, task factory)
    repeat_scale: int = 1      # more timed calls per round for models that run in microseconds
    min_recipe_s: float = 60   # recipes get at least this long, even past the deadline (--quick: 1/4)
    runner: Callable | None = None   # a case with its own runner (no model, peers or recipes)


DIGITS_RECIPES = ("int8", "prune-magnitude", "apoz", "kmeans", "lowrank", "hashed", "deep-compression",
                  "distill-mlp", "qat-int4")

CASES: dict[str, CaseSpec] = {
    "lenet-300-100": CaseSpec("lenet-300-100", DIGITS_RECIPES, batch=32, weight=1.0,
                              recipe_timeout_s=120, reserve_s=15, batch_note=" images (8x8 digits)",
                              all_shipped=True, seeds=5, repeat_scale=10),
    "lenet5": CaseSpec("lenet5", DIGITS_RECIPES, batch=32, weight=1.0, recipe_timeout_s=120,
                       reserve_s=15, batch_note=" images (1x8x8 digits)", all_shipped=True, seeds=5,
                       repeat_scale=10),
    "minilm": CaseSpec("minilm", ("int8", "int4", "prune-structured", "distill-l3"), batch=32,
                       weight=2.5, recipe_timeout_s=300, reserve_s=90, min_recipe_s=120,
                       batch_note=" sentences x 40 tokens",
                       second_score=("fidelity on other English text", _other_text_task)),
}
CASES["stream"] = CaseSpec("stream", (), batch=1, weight=0.3, recipe_timeout_s=0, reserve_s=0,
                           runner=run_stream_case)
CASES["decode"] = CaseSpec("decode", (), batch=1, weight=0.2, recipe_timeout_s=0, reserve_s=0,
                           runner=run_decode_case)
CASES["hashed-vs-dense"] = CaseSpec("hashed-vs-dense", (), batch=1, weight=0.4, recipe_timeout_s=0, reserve_s=0,
                                    runner=run_hashed_case)
CASES["minilm-lowrank"] = CaseSpec("minilm-lowrank", (), batch=32, weight=0.6, recipe_timeout_s=0, reserve_s=0,
                                   runner=run_lowrank_case)
CASES["lm-decode"] = CaseSpec("lm-decode", (), batch=1, weight=0.6, recipe_timeout_s=0, reserve_s=0,
                              runner=run_lm_decode_case)
# cheap cases first; MiniLM takes what is left
ORDER = ("lenet-300-100", "lenet5", "minilm", "stream", "decode", "hashed-vs-dense", "minilm-lowrank",
         "lm-decode")
SPEED_CASES = ("lenet-300-100", "lenet5", "minilm")   # a --speed-only pass's cases (issue #23's models)


@dataclass(frozen=True)
class RunOptions:
    quick: bool = False
    threads: int = 2
    command: str = "python -m bench"
    seeds: int | None = None   # override the case's seed count (a --quick run uses 1)
    speed_only: bool = False   # torch fp32 + ONNX Runtime peers, one seed, no second score
    artifacts: Path | None = None   # a full pass keeps its .slim files here; --speed-only reloads them


def case_name(text: str) -> str:
    """`builtin:minilm`, `minilm`, `all-minilm-l6-v2` ... -> the case's name."""
    name = text.removeprefix("builtin:").strip().lower()
    if name in ("all-minilm-l6-v2",):
        name = "minilm"
    if name not in CASES:
        raise ValueError(f"unknown bench case {text!r} (known: {', '.join(ORDER)})")
    return name


# ----------------------------------------------------------------------------- models

def baseline(spec: CaseSpec, seed: int) -> nn.Module:
    """The fp32 model: the zoo's for seed 0, else trained the zoo's way with `seed` (cached)."""
    import torch

    import slimkit as sk

    if seed == 0:
        return sk.zoo.load(spec.name).eval()
    from slimkit.zoo.cache import load_cached, save_cached
    from slimkit.zoo.digits import load_digits
    from slimkit.zoo.registry import base_of, tag
    from slimkit.zoo.train import fit

    entry = sk.zoo.entry(spec.name)
    key = f"bench-{spec.name}-seed{seed}-v1"
    model = entry.build()
    base = dict(base_of(model))
    state = load_cached(key)
    if state is not None:
        try:
            model.load_state_dict(state)
            return tag(model.eval(), base)
        except RuntimeError:
            pass
    torch.manual_seed(seed)
    model = entry.build()
    fit(model, load_digits(), seed=seed, **entry.train_settings)
    save_cached(key, model.state_dict())
    return tag(model.eval(), base)


# ----------------------------------------------------------------------------- recipes

def _shipped() -> dict[str, Path]:
    from slimkit.pipeline.recipes import shipped

    try:
        return shipped()
    except OSError:
        return {}


def _recipe_models(path: Path) -> list[str] | None:
    """The `models:` list of a shipped recipe YAML (None when it names none)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    models = doc.get("models") if isinstance(doc, dict) else None
    if isinstance(models, str):
        models = [models]
    return [str(m).removeprefix("builtin:") for m in models] if isinstance(models, list) else None


def recipes_for(spec: CaseSpec) -> list[tuple[str, str | None]]:
    """(recipe, reason it does not apply or None): the case's list, then any other shipped recipe
    whose `models:` names this model (or, for `all_shipped` cases, names no model at all and is
    not on another case's list)."""
    shipped = _shipped()
    out: list[tuple[str, str | None]] = []
    for name in spec.recipes:
        models = _recipe_models(shipped[name]) if name in shipped else None
        reason = None
        if models is not None and spec.name not in models:
            reason = f"recipe is for {', '.join(models)}"
        out.append((name, reason))
    others = {r for c in CASES.values() if c.name != spec.name for r in c.recipes}
    for name, path in sorted(shipped.items()):
        models = _recipe_models(path)
        if name in spec.recipes:
            continue
        if spec.name in (models or []) or (spec.all_shipped and models is None and name not in others):
            out.append((name, None))
    return out


def _short(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"\s*\((shipped|available):[^)]*\)", "", text)
    return text[:160]


def _implemented(recipe_name: str) -> bool:
    import slimkit as sk
    from slimkit.core.errors import SlimError

    try:
        sk.load_recipe(recipe_name)
    except SlimError:
        return False
    return True


def slim_candidate(spec: CaseSpec, recipe_name: str, task, workdir: Path, timeout_s: float | None,
                   threads: int, base: Callable[[], nn.Module] | None = None) -> Candidate:
    """Compress a fresh copy of the model (`base()`, default the zoo's) with a shipped recipe,
    save the .slim into `workdir`, load it back, score the loaded model."""
    import torch

    import slimkit as sk
    from slimkit.core.errors import SlimError
    from slimkit.core.torch_utils import num_threads
    from slimkit.eval.measure import count_params

    try:
        recipe = sk.load_recipe(recipe_name)
    except SlimError as exc:
        msg = _short(exc)
        note = "recipe not shipped yet" if msg.startswith("unknown recipe") else msg
        return Candidate(recipe_name, "slimkit", status=NOT_IMPLEMENTED, note=note)
    path = workdir / f"{Path(recipe_name).stem}.slim"
    try:
        model = base() if base is not None else sk.zoo.load(spec.name)
        with num_threads(threads):
            t0 = time.perf_counter()
            with time_limit(timeout_s):
                model = sk.run_recipe(model, recipe, task)
            took = time.perf_counter() - t0
        sk.save(model, path, info={"recipe": recipe_name})
        del model
        loaded = sk.load(path).eval()
        with torch.inference_mode():
            score = float(task.score(loaded))
        params, nonzeros = count_params(loaded)
    except TimeBudgetExceeded as exc:
        return Candidate(recipe_name, "slimkit", status="timed out", note=str(exc))
    except SlimError as exc:
        return Candidate(recipe_name, "slimkit", status="failed", note=_short(exc))
    except Exception as exc:  # noqa: BLE001 - a broken method is a result to report, not a crash
        return Candidate(recipe_name, "slimkit", status="failed",
                         note=f"{type(exc).__name__}: {_short(exc)}")
    return Candidate(recipe_name, "slimkit", model=loaded, file=str(path), bytes=path.stat().st_size,
                     score=score, params=params, nonzeros=nonzeros, compress_s=round(took, 2))


# ----------------------------------------------------------------------------- a case

class _Clock:
    """Time left for compression before `deadline`, keeping `reserve` seconds for timing."""

    def __init__(self, deadline: float, reserve: float, quick: bool, per_recipe: float):
        self.deadline, self.reserve, self.quick, self.per_recipe = deadline, reserve, quick, per_recipe

    def limit(self, waiting: int = 1) -> float:
        """Seconds the next recipe may take, `waiting` recipes (itself included) still to run:
        a full run gives each its own limit; a --quick run shares what is left fairly, so one
        slow recipe cannot starve the rest (a recipe done early leaves its time to the others)."""
        left = self.deadline - time.monotonic() - self.reserve
        if self.quick:
            return min(left, max(left / max(1, waiting), 8.0))
        return min(self.per_recipe, left)


def _recipes(spec: CaseSpec, task, workdir: Path, opts: RunOptions, clock: _Clock,
             progress: Callable[[str], None]) -> list[Candidate]:
    out = []
    todo = recipes_for(spec)
    runnable = [name for name, reason in todo if reason is None and _implemented(name)]
    for recipe_name, reason in todo:
        if reason is not None:
            out.append(Candidate(recipe_name, "slimkit", status="not applicable", note=reason))
            continue
        waiting = len(runnable) - runnable.index(recipe_name) if recipe_name in runnable else 1
        limit = clock.limit(waiting)
        if limit < 3:
            out.append(Candidate(recipe_name, "slimkit", status="skipped",
                                 note=f"time budget{' (--quick)' if opts.quick else ''}"))
            continue
        progress(f"recipe {recipe_name} (limit {limit:.0f} s)")
        c = slim_candidate(spec, recipe_name, task, workdir, limit, opts.threads)
        if c.status == "timed out" and opts.quick:
            c.note += " (the --quick budget)"
        out.append(c)
        progress(f"  {c.bytes} B, score {c.score:.5f}, {c.compress_s} s" if c.ok
                 else f"  {c.status}: {c.note}")
    return out


def _more_seeds(spec: CaseSpec, cands: list[Candidate], task, workdir: Path, seeds: int,
                opts: RunOptions, clock: _Clock, progress: Callable[[str], None]) -> None:
    """Score changes against the same-seed baseline for seeds 1..seeds-1, while time lasts."""
    ok = [c for c in cands if c.ok]
    base0 = next((c for c in ok if c.name == BASELINE), None)
    if base0 is None:
        return
    for c in ok:
        c.extra["seed_changes"] = [c.score - base0.score]
    for seed in range(1, seeds):
        if clock.limit() < 5:
            progress(f"seed {seed}: no time left, stopping at {seed} seed(s)")
            break
        progress(f"seed {seed}: baseline and peers")
        folder = workdir / f"seed{seed}"
        folder.mkdir()
        model = baseline(spec, seed)
        peers = {p.name: p for p in build_peers(model, task, folder, opts.threads) if p.ok}
        ref = peers.get(BASELINE)
        if ref is None:
            break
        for c in ok:
            if clock.limit() < 3:
                break
            if c.kind == "peer":
                twin = peers.get(c.name)
            else:
                twin = slim_candidate(spec, c.name, task, folder, clock.limit(), opts.threads,
                                      base=lambda s=seed: baseline(spec, s))
                twin = twin if twin.ok else None
            if twin is not None:
                c.extra["seed_changes"].append(twin.score - ref.score)
        del model, peers


def run_case(spec: CaseSpec, opts: RunOptions, deadline: float,
             progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Peers + recipes of one case (+ more seeds), timed together; returns the case's record.

    `deadline` (time.monotonic) bounds the compression work: each recipe gets at most its own
    limit and what is left before the deadline minus the reserve for timing; a recipe with no
    time left is listed as skipped, never given a number.
    """
    import torch

    import slimkit as sk

    if spec.runner is not None:
        return spec.runner(spec, opts, deadline, progress)
    protocol = (QUICK if opts.quick else FULL).scaled(spec.repeat_scale)
    seeds = 1 if opts.speed_only else opts.seeds if opts.seeds is not None else (1 if opts.quick else spec.seeds)
    clock = _Clock(deadline, spec.reserve_s * (0.3 if opts.quick else 1.0), opts.quick,
                   spec.recipe_timeout_s)
    start = time.monotonic()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    def say(msg: str) -> None:
        progress(f"[{spec.name}] {msg}")

    torch.set_num_threads(opts.threads)
    say("loading model and task")
    model = baseline(spec, 0)
    task = sk.zoo.entry(spec.name).task()
    extra: dict = {"compute_pass": compute_pass(), "speed_only": opts.speed_only}
    with tempfile.TemporaryDirectory(prefix=f"slimkit-bench-{spec.name}-") as tmp:
        workdir = Path(tmp)
        cands = build_peers(model, task, workdir, opts.threads, progress=say,
                            names=SPEED_PEERS if opts.speed_only else None)
        kept = artifacts.reload(spec.name, opts.artifacts, task) if opts.speed_only and opts.artifacts else None
        if kept is not None:
            say(f"reloaded the artifacts kept in {opts.artifacts / spec.name}")
            cands += kept[0]
            extra["artifacts_from"] = kept[1]
        else:
            # a slow or busy machine may have spent the budget already: recipes still get a minimum
            floor = spec.min_recipe_s * (0.25 if opts.quick else 1.0)
            clock.deadline = max(clock.deadline, time.monotonic() + clock.reserve + floor)
            cands += _recipes(spec, task, workdir, opts, clock, say)
        if opts.artifacts and not opts.speed_only:
            artifacts.keep(spec.name, cands, opts.artifacts, {"command": opts.command, "quick": opts.quick})
        if seeds > 1:
            _more_seeds(spec, cands, task, workdir, seeds, opts, clock, say)
        if spec.second_score is not None and not opts.quick and not opts.speed_only:
            label, factory = spec.second_score
            say(f"scoring: {label}")
            second = factory()
            with torch.inference_mode():
                for c in cands:
                    if c.ok:
                        c.extra["second_score"] = float(second.score(c.model))
            extra["second_score_name"] = label
        say(f"timing {sum(c.ok for c in cands)} candidates, interleaved")
        time_candidates(cands, task, spec.batch, protocol, opts.threads)
        record_runtime(cands)
        return case_result(spec.name, cands, score_name=getattr(task, "score_name", "score"),
                           batch=spec.batch, command=opts.command, protocol=protocol,
                           threads=opts.threads, wall_s=time.monotonic() - start,
                           info=machine_info(opts.threads), quick=opts.quick,
                           batch_note=spec.batch_note, seeds=seeds, load_start=load_start,
                           **extra)
