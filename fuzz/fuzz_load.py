"""Fuzz the .slim loader: mutate valid artifacts, load them, allow nothing but `SlimFormatError`.

Two engines share one target (`fuzz/target.py`) and one mutator (`fuzz/mutate.py`):

- atheris (coverage-guided libFuzzer; `make fuzz`): slimkit's modules are instrumented, the custom
  mutator mixes structure-aware edits with libFuzzer's own, memory is capped with `-rss_limit_mb` /
  `-malloc_limit_mb`, one input with `-timeout`;
- `--pure` (no atheris needed; used by `tools/check_safety.py`): the same mutator on the seeds, with
  the process' data segment capped (`RLIMIT_DATA`), so an oversized allocation fails loudly.

Any input that makes the target fail is saved to `fuzz/corpus/regression/` (name: hash + what
failed); `tests/io/test_regression_corpus.py` replays that folder in the normal test suite.

    .venv/bin/python fuzz/fuzz_load.py --runs 100000          # atheris
    .venv/bin/python fuzz/fuzz_load.py --pure --runs 2000     # pure Python
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEEDS = HERE / "corpus" / "seeds"
REGRESSION = HERE / "corpus" / "regression"
WORK = HERE / "work"
MEMORY_MB = 3072

sys.path.insert(0, str(ROOT))


def save_finding(data: bytes, exc: BaseException, folder: Path = REGRESSION) -> Path:
    """Keep a failing input in the regression corpus (idempotent: named by content hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:16]
    path = folder / f"{digest}-{type(exc).__name__}"
    if not path.exists():
        path.write_bytes(data)
    return path


def seed_inputs() -> list[bytes]:
    files = sorted(p for p in SEEDS.iterdir() if p.is_file()) if SEEDS.is_dir() else []
    if not files:
        raise SystemExit(f"no seeds in {SEEDS}: run .venv/bin/python fuzz/make_seeds.py first")
    return [p.read_bytes() for p in files]


def run_pure(runs: int, seed: int = 0, memory_mb: int = MEMORY_MB, quiet: bool = False,
             regression: Path = REGRESSION) -> dict:
    """`runs` mutated inputs through the target; returns counts and the findings' paths.

    >>> run_pure(200, quiet=True)["findings"]                       # doctest: +SKIP
    0
    """
    from fuzz.mutate import mutate
    from fuzz.target import check, setup

    setup()
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    rng = random.Random(seed)
    pool = seed_inputs()
    counts = {"runs": 0, "loaded": 0, "rejected": 0, "findings": 0}
    findings: list[str] = []
    start = time.perf_counter()
    try:
        for i in range(runs):
            child = mutate(rng.choice(pool), seed=rng.getrandbits(64))
            try:
                outcome = check(child)
            except Exception as exc:  # noqa: BLE001 - every other exception is a finding
                counts["findings"] += 1
                saved = save_finding(child, exc, regression)
                findings.append(f"{saved.name}: {type(exc).__name__}: {str(exc)[:160]}")
                continue
            finally:
                counts["runs"] += 1
            counts[outcome] += 1
            if outcome == "loaded" and len(pool) < 256 and child not in pool:
                pool.append(child)          # valid mutants are good parents
            if not quiet and (i + 1) % 1000 == 0:
                rate = (i + 1) / (time.perf_counter() - start)
                print(f"#{i + 1} {counts} {rate:.0f}/s", flush=True)
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    counts["seconds"] = round(time.perf_counter() - start, 2)
    counts["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return {**counts, "finding_files": findings}


def run_atheris(runs: int, extra: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["slimkit"]):
        import slimkit  # noqa: F401  (registers every codec, runtime module and model builder)
        import slimkit.io.artifact  # noqa: F401
    from fuzz.mutate import mutate
    from fuzz.target import check, setup

    setup()

    def one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:
            save_finding(data, exc)
            raise

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        if seed % 4 == 0:
            return atheris.Mutate(data, max_size)
        return mutate(data, seed, max_size)

    WORK.mkdir(exist_ok=True)
    for source in (SEEDS, REGRESSION):
        for path in source.glob("*"):
            if path.is_file():
                shutil.copy(path, WORK / path.name)
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    args = [sys.argv[0], str(WORK), f"-runs={runs}", f"-rss_limit_mb={MEMORY_MB}",
            f"-malloc_limit_mb={MEMORY_MB}", "-timeout=30", "-max_len=1048576", "-print_final_stats=1",
            f"-artifact_prefix={crashes}/", *extra]
    atheris.Setup(args, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fuzz the .slim loader")
    parser.add_argument("--runs", type=int, default=100_000, help="number of inputs (default 100000)")
    parser.add_argument("--pure", action="store_true", help="pure-Python mutator, no atheris")
    parser.add_argument("--seed", type=int, default=0)
    args, extra = parser.parse_known_args(argv)
    if not args.pure:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed; using the pure-Python mutator (--pure)", file=sys.stderr)
            args.pure = True
    if args.pure:
        report = run_pure(args.runs, args.seed)
        print({k: v for k, v in report.items() if k != "finding_files"})
        for line in report["finding_files"]:
            print("finding:", line)
        return 1 if report["findings"] else 0
    run_atheris(args.runs, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
