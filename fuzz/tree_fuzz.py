"""The structure-aware fuzzer: .slim manifests, codec parameters, HF configs and YAML recipes mutated
as trees, each case run through slimkit's real entry point in a worker process (`make fuzz-tree`).

Seeds are made on the fly (`fuzz/tree_seeds.py`: tiny models through every codec and base kind, the
shipped recipes, tiny Hugging Face folders); case `i` is a seed and 1-4 edits drawn from a generator
seeded with (`--seed`, `i`), so a run is reproducible whatever the number of workers. Workers (one per
core at most, started once and reused: `fuzz/tree_pool.py`) generate and run their cases
(`fuzz/tree_target.py`); per case:

- the outcome must be success or a one-line `SlimError` (the CLI's exit 2); anything else is a finding;
- CPU time at most `--time-limit` seconds (10; a case still running after `--wall-limit` of wall time
  is killed with its worker: a hang; the wall clock starts when the worker has written the case and
  says "started", so a large case the fuzzer itself is slow to write is no hang of slimkit's);
- peak RSS at most max(500 MB, 4x the input's size): the worker's VmHWM, reset before each case
  (/proc/self/clear_refs), and its address space capped (RLIMIT_AS), so a huge allocation fails fast.

Findings are minimised (edits dropped while the same failure remains) and written to `--corpus`
(default fuzz/corpus/tree/, which `tests/io/test_tree_corpus.py` replays), with a `.txt` beside each.

    .venv/bin/python fuzz/tree_fuzz.py --cases 20000 --seed 1
    .venv/bin/python fuzz/tree_fuzz.py --cases 300 --seed 0 --corpus /tmp/findings    # the CI row
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from fuzz.tree_pool import Pool  # noqa: E402 - after the path insert, for `python fuzz/tree_fuzz.py`

CORPUS = HERE / "corpus" / "tree"
RSS_FLOOR = 500 << 20
TIME_LIMIT_S = 10.0
WALL_LIMIT_S = 60.0
ADDRESS_HEADROOM = 4 << 30      # RLIMIT_AS: the worker's size after start-up plus this
KIND_WEIGHTS = {"slim": 0.55, "recipe": 0.2, "hf": 0.25}   # how often each kind of input is drawn


def draw(seeds: list, vocab: dict, master: int, i: int) -> tuple:
    """Case `i` of run `master`: (seed, edits)."""
    from fuzz.tree_cases import mutate

    rng = random.Random(f"{master}:{i}")
    kinds = sorted({s.kind for s in seeds})
    kind = rng.choices(kinds, [KIND_WEIGHTS.get(k, 1.0) for k in kinds])[0]
    seed = rng.choice([s for s in seeds if s.kind == kind])
    return seed, mutate(seed, rng, vocab)


# ---------------------------------------------------------------- the worker

def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) * 1024


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) * 1024


def _reset_peak() -> int:
    """Reset the peak RSS to the current RSS; returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _rss()


class _CpuTimeout(BaseException):
    pass


def _on_cpu_limit(signum, frame):
    raise _CpuTimeout


def _where(exc: BaseException) -> str:
    """The innermost frame of slimkit's (else the innermost) that raised `exc`: file:function."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "/slimkit/" in f.filename] or frames
    return f"{Path(mine[-1].filename).name}:{mine[-1].name}" if mine else "?"


def worker(seed_dir: str, master: int, time_limit: float) -> None:
    """Read requests (JSON lines) on stdin, answer one JSON line each on stdout."""
    import fuzz.tree_target as target
    from fuzz.tree_cases import vocabulary, write_case
    from fuzz.tree_seeds import parse_seeds
    from fuzz.tree_target import run, setup

    setup()
    seeds = parse_seeds(Path(seed_dir))
    vocab = vocabulary(seeds)
    out = os.fdopen(os.dup(1), "w")   # the protocol; whatever the target prints (Python or C) goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    scratch = Path(tempfile.mkdtemp(prefix="slim-tree-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    import slimkit  # noqa: F401 - everything a case needs, loaded before the address space is measured
    import slimkit.io.artifact  # noqa: F401
    import slimkit.zoo.hf

    with slimkit.zoo.hf.quiet() as transformers:   # what an hf case imports, so that every case starts alike
        transformers.BertModel, transformers.LlamaForCausalLM  # noqa: B018 - lazy modules, imported here
    ready = _rss()   # a fresh process that reads one input: this, plus what the case itself takes

    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + ADDRESS_HEADROOM, resource.RLIM_INFINITY))
    signal.signal(signal.SIGPROF, _on_cpu_limit)
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        seed, edits = draw(seeds, vocab, master, req["i"])
        if "keep" in req:
            edits = [edits[j] for j in req["keep"]]
        for p in scratch.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        reply = {"i": req["i"], "kind": seed.kind, "seed": seed.name}
        try:
            path = write_case(seed, edits, scratch)
            reply["size"] = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
        except Exception as exc:  # noqa: BLE001 - a case the writer cannot write is skipped
            reply.update(outcome="skipped", error=f"{type(exc).__name__}: {exc}"[:300])
            out.write(json.dumps(reply) + "\n")
            out.flush()
            continue
        out.write(json.dumps({"started": req["i"]}) + "\n")   # the pool's wall clock starts here
        out.flush()
        target.PHASE = ""
        before = _reset_peak()
        start = resource.getrusage(resource.RUSAGE_SELF)
        signal.setitimer(signal.ITIMER_PROF, time_limit)
        try:
            reply["outcome"] = run(seed.kind, path)
        except _CpuTimeout:
            if target.PHASE == "apply":   # a recipe that asks for long training is slow by request
                reply["outcome"] = "slow"
                target.PHASE = ""
            else:
                reply.update(outcome="finding", error=f"TimeLimit: more than {time_limit:g} s of CPU")
        except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            reply.update(outcome="finding", error=f"{type(exc).__name__}: {str(exc).strip()[:300]}",
                         where=_where(exc))
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        end = resource.getrusage(resource.RUSAGE_SELF)
        reply["cpu"] = round(end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime, 3)
        reply["rss"] = ready + max(0, _peak_rss() - before)   # as if in a fresh worker
        bound = max(RSS_FLOOR, 4 * reply["size"])
        if reply["outcome"] != "finding" and reply["rss"] > bound:
            reply.update(outcome="finding", error=f"PeakRSS: {reply['rss'] >> 20} MB > {bound >> 20} MB")
        if reply["outcome"] not in ("finding", "slow") and reply["cpu"] > time_limit:
            reply.update(outcome="finding", error=f"TimeLimit: {reply['cpu']:.1f} s of CPU")
        out.write(json.dumps(reply) + "\n")
        out.flush()


# ---------------------------------------------------------------- findings

def signature(reply: dict) -> str:
    """What kind of failure a reply is: kind, seed family and the error's type."""
    return f"{reply.get('kind', '?')}:{reply['error'].split(':')[0]}:{reply.get('where', '')}"


def minimise(pool: Pool, reply: dict, n_edits: int) -> list[int]:
    """Indices of the edits that still give the same failure when the others are dropped."""
    keep = list(range(n_edits))
    want = signature(reply)
    for j in reversed(range(n_edits)):
        if len(keep) == 1:
            break
        trial = [k for k in keep if k != j]
        (answer,) = pool.run([{"i": reply["i"], "keep": trial}])
        if answer.get("outcome") == "finding" and signature(answer) == want:
            keep = trial
    return keep


def save_finding(folder: Path, seeds: list, vocab: dict, master: int, reply: dict, keep: list[int]) -> Path:
    """Write the minimised case to `folder` (named kind-hash-error) with a .txt saying what failed."""
    from fuzz.tree_cases import case_bytes, write_case
    from fuzz.tree_docs import plain

    seed, edits = draw(seeds, vocab, master, reply["i"])
    edits = [edits[j] for j in keep]
    digest = hashlib.sha1(case_bytes(seed, edits)).hexdigest()[:12]
    error = reply["error"].split(":")[0]
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"slim": ".slimfile", "recipe": ".yaml", "hf": ""}[seed.kind]
    target = folder / f"{seed.kind}-{digest}-{error}{suffix}"
    with tempfile.TemporaryDirectory() as tmp:
        written = write_case(seed, edits, Path(tmp))
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(written), target)
    note = {"seed": seed.name, "run": master, "case": reply["i"], "error": reply["error"],
            "where": reply.get("where"),
            "edits": [[list(map(str, p)), plain(v)] for p, v in edits]}
    Path(f"{target}.txt").write_text(json.dumps(note, indent=1, default=str)[:20000] + "\n")
    return target


def fresh_rss(seed, edits: list) -> tuple[int, int]:
    """(peak RSS in bytes of a fresh process that runs the case, the input's size): the arbiter of an
    RSS finding (a long-lived worker's own heap grows over thousands of cases)."""
    import re

    from fuzz.tree_cases import write_case

    with tempfile.TemporaryDirectory() as tmp:
        path = write_case(seed, edits, Path(tmp))
        entry = path.with_name(f"{seed.kind}-case{path.suffix}")
        path.rename(entry)
        size = sum(p.stat().st_size for p in ([entry] if entry.is_file() else entry.iterdir()))
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, str(HERE / "tree_target.py"), str(entry)], capture_output=True,
                              text=True, env=env, timeout=600)
    found = re.search(r"peak RSS (\d+) MB\)$", done.stdout.strip())
    return (int(found.group(1)) << 20 if found else 1 << 62), size


# ---------------------------------------------------------------- the run

def fuzz(cases: int, master: int = 0, workers: int | None = None, corpus: Path = CORPUS,
         time_limit: float = TIME_LIMIT_S, wall_limit: float = WALL_LIMIT_S, quiet: bool = False,
         seed_dir: Path | None = None) -> dict:
    """Run `cases` cases of run `master`; returns counts, rates and the saved findings."""
    from fuzz.tree_cases import vocabulary
    from fuzz.tree_seeds import build_seeds, parse_seeds

    workers = max(1, min(workers or os.cpu_count() or 1, os.cpu_count() or 1))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slim-tree-seeds-") as tmp:
        folder = seed_dir or Path(tmp)
        if not (folder / "DONE").exists():
            _quietly(build_seeds, folder)
        seeds = parse_seeds(folder)
        vocab = vocabulary(seeds)
        setup_s = time.perf_counter() - start
        pool = Pool(workers, folder, master, time_limit, wall_limit)
        counts: dict[str, int] = {}
        by_kind: dict[str, dict[str, int]] = {}   # kind -> outcome -> cases
        found: dict[str, dict] = {}
        peak_rss, peak_cpu, done = 0, 0.0, 0
        skips: list[str] = []
        slowest = ""
        begin = time.perf_counter()
        try:
            for reply in pool.run({"i": i} for i in range(cases)):
                done += 1
                counts[reply["outcome"]] = counts.get(reply["outcome"], 0) + 1
                tally = by_kind.setdefault(reply.get("kind", "?"), {})
                tally[reply["outcome"]] = tally.get(reply["outcome"], 0) + 1
                peak_rss = max(peak_rss, reply.get("rss", 0))
                if reply.get("cpu", 0.0) > peak_cpu:
                    peak_cpu, slowest = reply["cpu"], f"case {reply['i']} ({reply.get('seed')}): {reply['outcome']}"
                if reply["outcome"] == "skipped" and len(skips) < 3:
                    skips.append(f"case {reply['i']} ({reply.get('seed')}): {reply['error']}")
                if reply["outcome"] == "finding":
                    if "kind" not in reply:   # a crash or a hang: the worker could not say
                        seed, _ = draw(seeds, vocab, master, reply["i"])
                        reply.update(kind=seed.kind, seed=seed.name)
                    found.setdefault(signature(reply), reply)
                    if not quiet:
                        print(f"finding #{reply['i']} ({reply.get('seed')}): {reply['error'][:200]}", flush=True)
                if not quiet and done % 1000 == 0:
                    rate = done / (time.perf_counter() - begin)
                    print(f"{done} cases, {rate:.1f}/s, {counts}", flush=True)
            run_s = time.perf_counter() - begin
            saved, unconfirmed = [], []
            for reply in found.values():
                seed, edits = draw(seeds, vocab, master, reply["i"])
                if reply["error"].startswith("PeakRSS"):
                    rss, size = fresh_rss(seed, edits)
                    if rss <= max(RSS_FLOOR, 4 * size):
                        unconfirmed.append(f"case {reply['i']}: {reply['error']}, {rss >> 20} MB in a fresh process")
                        continue
                killed = reply["error"].split(":")[0] in ("Crash", "Hang", "WriterHang")   # not re-run to minimise
                keep = list(range(len(edits))) if killed else minimise(pool, reply, len(edits))
                saved.append(str(save_finding(corpus, seeds, vocab, master, reply, keep)))
        finally:
            pool.close()
    rate = done / run_s if run_s else 0.0
    return {"cases": done, "seed": master, "workers": workers, "outcomes": counts, "by_kind": by_kind,
            "findings": len(saved), "distinct": len(found), "saved": saved, "rss_unconfirmed": unconfirmed,
            "skipped_examples": skips, "cases_per_s": round(rate, 2), "setup_s": round(setup_s, 1),
            "run_s": round(run_s, 1),
            "projected_100k_min": round(100_000 / rate / 60, 1) if rate else None,
            "peak_rss_mb": peak_rss >> 20, "peak_case_cpu_s": peak_cpu, "slowest_case": slowest}


def _quietly(fn, *args):
    """Run `fn` with its progress bars and warnings out of the way."""
    import contextlib
    import io
    import warnings

    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="structure-aware fuzzing of slimkit's input readers")
    parser.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed: same seed, same cases")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="where findings are saved")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="CPU seconds per case (10)")
    parser.add_argument("--wall-limit", type=float, default=WALL_LIMIT_S, help="wall seconds before a kill (60)")
    parser.add_argument("--seeds", type=Path, default=None, help="a folder to build (or reuse) the seeds in")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.seed, args.time_limit)
        return 0
    report = fuzz(args.cases, args.seed, args.workers, args.corpus, args.time_limit, args.wall_limit, args.quiet,
                  args.seeds)
    print(json.dumps(report))
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
