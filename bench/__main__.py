"""`python -m bench [--quick] [--only NAME] [--out DIR] [--compute-dtype D] [--speed-only] [--artifacts [DIR]]`

Runs the cases (lenet-300-100, lenet5, builtin:minilm with their peers and every implemented shipped
recipe; then stream, decode, hashed-vs-dense, minilm-lowrank and lm-decode), and writes
`bench/RESULTS.md` and `bench/results.json` (atomically, after each case; a case run with `--only`
replaces that case and keeps the others). The compression work is bounded by a time budget (19 min,
`--quick` 2.5 min) shared among the cases; a recipe that gets no time is listed as skipped, never given
a number. Peers, scoring and timing are not cut short, and each case's recipes get a minimum time, so on
a busy machine a run can take longer than its budget.

`make bench` runs two passes (issue #23: the speed targets on the machine's own path and with
float32 forced):

    python -m bench --compute-dtype auto --artifacts           # full pass, keeps the .slim files
    python -m bench --compute-dtype float32 --speed-only --artifacts   # times those files again

`--compute-dtype` sets SLIMKIT_COMPUTE_DTYPE before slimkit is imported ("auto" clears it). A
pass other than a full one on `auto` is stored beside it, as "lenet5 [SLIMKIT_COMPUTE_DTYPE=float32,
speed only]", never over it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

FULL_BUDGET_S = 19 * 60
QUICK_BUDGET_S = 150
COMPUTE_ENV = "SLIMKIT_COMPUTE_DTYPE"     # slimkit.nn.quant_linear.COMPUTE_ENV, named before slimkit loads
FORCED_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_ARTIFACTS = Path(__file__).resolve().parent / "out" / "artifacts"   # bench/out/ is git-ignored


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few timing rounds, 3-minute budget")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this case (repeatable): lenet-300-100, lenet5, minilm, stream, decode, "
                        "hashed-vs-dense, minilm-lowrank, lm-decode")
    p.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads (default 2)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="training seeds per digits candidate (default 5, --quick 1)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="time budget of the whole run (default 1140, --quick 150)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="folder for RESULTS.md and results.json (default: bench/)")
    p.add_argument("--compute-dtype", choices=("auto", *FORCED_DTYPES), default=None,
                   help="set SLIMKIT_COMPUTE_DTYPE for this run before slimkit loads ('auto' clears it; "
                        "default: the environment as it is); the results record it")
    p.add_argument("--speed-only", action="store_true",
                   help="what the speed targets need: torch fp32 and ONNX Runtime peers and the slimkit "
                        "artifacts (those kept by --artifacts, else compressed afresh), one seed; "
                        "default cases lenet-300-100, lenet5, minilm")
    p.add_argument("--artifacts", type=Path, nargs="?", const=DEFAULT_ARTIFACTS, default=None, metavar="DIR",
                   help="a full pass keeps each case's .slim files here, a --speed-only pass times them "
                        "(default DIR: bench/out/artifacts, git-ignored)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1 or (args.seeds is not None and args.seeds < 1):
        print("error: --threads and --seeds must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["SLIMKIT_THREADS"] = str(args.threads)
    if args.compute_dtype == "auto":
        os.environ.pop(COMPUTE_ENV, None)
    elif args.compute_dtype is not None:
        os.environ[COMPUTE_ENV] = args.compute_dtype

    from bench.cases import CASES, ORDER, SPEED_CASES, RunOptions, case_name, run_case
    from bench.harness import summary_lines, write_results

    try:
        names = [case_name(n) for n in args.only] if args.only else list(SPEED_CASES if args.speed_only else ORDER)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [n for n in ORDER if n in names]
    command = "python -m bench" + ("".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
                                   if argv is None else "".join(f" {shlex.quote(a)}" for a in argv))
    if args.speed_only and any(CASES[n].runner is not None for n in names):
        print(f"error: --speed-only runs {', '.join(SPEED_CASES)} only", file=sys.stderr)
        return 2
    opts = RunOptions(quick=args.quick, threads=args.threads, command=command, seeds=args.seeds,
                      speed_only=args.speed_only, artifacts=args.artifacts)
    budget = args.budget or (QUICK_BUDGET_S if args.quick else FULL_BUDGET_S)
    start = time.monotonic()
    end = start + budget
    failed = 0

    def progress(msg: str) -> None:
        print(f"{time.monotonic() - start:7.1f}s  {msg}", flush=True)

    for i, name in enumerate(names):
        spec = CASES[name]
        weights = sum(CASES[n].weight for n in names[i:])
        deadline = time.monotonic() + (end - time.monotonic()) * spec.weight / weights
        try:
            case = run_case(spec, opts, deadline, progress)
        except Exception as exc:  # noqa: BLE001 - report the case and go on with the others
            failed += 1
            progress(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            continue
        md, js = write_results([case], args.out)
        print("\n".join(summary_lines(case)), flush=True)
        progress(f"[{name}] written to {md} and {js.name}")
    progress(f"done in {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
