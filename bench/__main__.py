"""`python -m bench [--quick] [--only NAME] [--threads N] [--out DIR]`

Runs the cases (lenet-300-100, lenet5, builtin:minilm) with their peers and every implemented
shipped recipe, and writes `bench/RESULTS.md` and `bench/results.json` (atomically, after each
case; a case run with `--only` replaces that case and keeps the others). The compression work is
bounded by a time budget (19 min, `--quick` 2.5 min) shared among the cases; a recipe that gets no
time is listed as skipped, never given a number. Peers, scoring and timing are not cut short, and
each case's recipes get a minimum time, so on a busy machine a run can take longer than its budget.
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few timing rounds, 3-minute budget")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this case (repeatable): minilm, lenet-300-100, lenet5")
    p.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads (default 2)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="training seeds per digits candidate (default 5, --quick 1)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="time budget of the whole run (default 1140, --quick 150)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="folder for RESULTS.md and results.json (default: bench/)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1 or (args.seeds is not None and args.seeds < 1):
        print("error: --threads and --seeds must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["SLIMKIT_THREADS"] = str(args.threads)

    from bench.cases import CASES, ORDER, RunOptions, case_name, run_case
    from bench.harness import summary_lines, write_results

    try:
        names = [case_name(n) for n in args.only] if args.only else list(ORDER)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [n for n in ORDER if n in names]
    command = "python -m bench" + ("".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
                                   if argv is None else "".join(f" {shlex.quote(a)}" for a in argv))
    opts = RunOptions(quick=args.quick, threads=args.threads, command=command, seeds=args.seeds)
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
