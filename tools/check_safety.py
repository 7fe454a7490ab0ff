"""The safety targets of issue 8 in one table; exits 1 if any check fails (`make check-safety`).

- pickles executed: a malicious pickle (unpickling it would create a marker file) given to
  `slimkit compress` with and without `--trust-pickle`, and to `resolve(trust_pickle=True)`, is
  refused with a one-line error, and the marker never appears;
- tree-fuzzed inputs: a short run (300 cases) of the structure-aware fuzzer (`fuzz/tree_fuzz.py`:
  manifests, codec parameters, HF configs and recipes mutated as trees, in worker processes, each case
  within 10 s of CPU and max(500 MB, 4x its size) of RSS), no finding;
- fuzzed artifacts: N mutated seed artifacts (`fuzz/`, pure-Python structure-aware mutator, in
  process, data segment capped) all load or fail with a one-line `SlimFormatError`; the
  coverage-guided 100k-case atheris run is `make fuzz`;
- kill -9 during save: a process replacing a .slim file in a loop, killed at random moments,
  always leaves a loadable file holding one whole write, never a mixture;
- ONNX parity: `slimkit export X.slim --onnx Y.onnx --json` on lenet-300-100 int8 and lenet5 int8
  reports ONNX Runtime outputs with cosine >= 0.999 to slimkit's;
- hostile inputs (issue 22, `tools/hostile_cases.py` and `tools/hostile_more.py`): one generated case
  per class (output paths, malformed specs and configs, inputs truncated while read, limits from real
  bytes, YAML types, numerics), each run as its own process: exit code 2 with a one-line error, no
  traceback, <= 10 s of CPU time, peak RSS <= max(500 MB, 4x the input); and two compresses racing to
  one new --out, of which exactly one succeeds.

    .venv/bin/python tools/check_safety.py                 # all checks (~3 min on 2 busy cores)
    .venv/bin/python tools/check_safety.py --fuzz-runs 20000 --kills 8
    .venv/bin/python tools/check_safety.py --only hostile  # the issue 22 rows alone
    .venv/bin/python tools/check_safety.py --only tree --fuzz-seed 0   # the tree fuzzer's row alone
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MIN_COSINE = 0.999

Result = tuple[bool, str]   # (passed, detail)


def cli(*args: str) -> tuple[int, str, str]:
    """Run `slimkit ARGS...` through the CLI's real entry point, in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from slimkit.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["slimkit", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


class _Payload:
    """Unpickling this calls `open(marker, "w")`: the file appears iff pickle code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def check_pickles(work: Path) -> Result:
    import torch

    import slimkit as sk

    marker = work / "PICKLE-CODE-RAN"
    tries, refused = [], 0
    for suffix in (".pt", ".bin"):
        evil = work / f"evil{suffix}"
        with open(evil, "wb") as fh:
            pickle.dump({"fc.weight": torch.zeros(2, 2), "boom": _Payload(marker)}, fh, protocol=2)
        for extra in ([], ["--trust-pickle"]):
            code, _, err = cli("compress", str(evil), "--recipe", "int8", "--out", str(work / "evil.slim"), *extra)
            tries.append(f"compress {evil.name} {' '.join(extra)}".strip())
            refused += code == 2 and err.strip().splitlines()[-1].startswith("slimkit: error:")
        try:
            sk.resolve(str(evil), trust_pickle=True)
        except sk.SlimError:
            refused += 1
        tries.append(f"resolve({evil.name}, trust_pickle=True)")
    executed = int(marker.exists())
    control = work / "CONTROL"   # the payload is live: a plain pickle.loads does run it
    pickle.loads(pickle.dumps(_Payload(control))).close()
    ok = executed == 0 and refused == len(tries) and control.exists()
    return ok, (f"{executed} pickles executed; {refused}/{len(tries)} attempts refused with a one-line error "
                f"(control: plain pickle.loads {'runs' if control.exists() else 'does NOT run'} the payload)")


def check_fuzz(runs: int, seed: int) -> Result:
    from fuzz.fuzz_load import run_pure

    with tempfile.TemporaryDirectory() as findings:
        report = run_pure(runs, seed=seed, quiet=True, regression=Path(findings))
        for line in report["finding_files"][:3]:
            print(f"  finding: {line}", file=sys.stderr)
    crashes = report["findings"]
    return crashes == 0, (f"{report['runs']} fuzzed artifacts (seed {seed}), {crashes} crashes "
                          f"({report['rejected']} refused "
                          f"with SlimFormatError, {report['loaded']} loaded; peak RSS {report['max_rss_mb']} MB)")


def check_tree_fuzz(cases: int, seed: int) -> Result:
    """A short run of the structure-aware fuzzer (`fuzz/tree_fuzz.py`; `make fuzz-tree` runs 100k)."""
    from fuzz.tree_fuzz import fuzz

    with tempfile.TemporaryDirectory() as findings:
        report = fuzz(cases, seed, corpus=Path(findings), quiet=True)
        for line in report["saved"][:3]:
            print(f"  tree finding: {Path(line).name}", file=sys.stderr)
    outcomes = report["outcomes"]
    return report["findings"] == 0, (
        f"{report['cases']} tree-mutated inputs (seed {seed}: "
        f"{', '.join(f'{sum(v.values())} {k}' for k, v in sorted(report['by_kind'].items()))}), "
        f"{report['findings']} findings "
        f"({outcomes.get('refused', 0)} refused, {outcomes.get('ok', 0) + outcomes.get('forward', 0)} accepted; "
        f"worst case {report['peak_case_cpu_s']:.1f} s CPU, {report['peak_rss_mb']} MB)")


WRITER = """
import sys, torch
from torch import nn
import slimkit as sk
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(1024, 2048))   # 8 MB: a write takes long enough to be interrupted
print("ready", flush=True)
i = 0
while True:
    with torch.no_grad():
        model[0].bias.fill_(float(i))
    sk.save(model, sys.argv[1])
    i += 1
"""


def check_kill(work: Path, kills: int) -> Result:
    import torch

    import slimkit as sk

    path = work / "m.slim"
    arch = torch.nn.Sequential(torch.nn.Linear(1024, 2048))
    with torch.no_grad():
        arch[0].bias.fill_(-1.0)
    sk.save(arch, path)
    rng = random.Random(0)
    good, values = 0, set()
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            return False, "the writer process did not start"
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        try:
            bias = sk.load(path, model=torch.nn.Sequential(torch.nn.Linear(1024, 2048)))[0].bias
        except sk.SlimError as exc:
            return False, f"after kill -9 the file does not load: {exc}"
        good += bool(torch.all(bias == bias[0]))
        values.add(float(bias[0]))
    return good == kills, (f"{kills} kill -9 during save: previous file loadable {good}/{kills} times "
                           f"({len(values)} distinct versions seen)")


def check_onnx(work: Path) -> Result:
    import slimkit as sk

    rows, ok = [], True
    for name in ("lenet-300-100", "lenet5"):
        model = sk.apply_(sk.zoo.load(name), sk.make_config("int8"))
        slim = work / f"{name}-int8.slim"
        sk.save(model, slim)
        code, out, err = cli("export", str(slim), "--onnx", str(work / f"{name}.onnx"), "--json")
        if code != 0:
            return False, f"slimkit export {slim.name} failed: {(err.strip().splitlines() or ['no output'])[-1]}"
        report = json.loads(out.strip().splitlines()[-1])
        ok &= report["cosine"] >= MIN_COSINE
        rows.append(f"{name} int8 cosine {report['cosine']:.6f} (max abs diff {report['max_abs_diff']:.2g})")
    return ok, "; ".join(rows)


def hostile_rows(work: Path) -> list[tuple[str, str, str, str]]:
    """The issue 22 rows: (name, PASS/FAIL, time, detail), two cases at a time (each is measured on
    its own: CPU time and peak RSS of its process)."""
    from concurrent.futures import ThreadPoolExecutor

    from tools.hostile_cases import cases, race, run_case
    from tools.hostile_more import more_cases

    folder = work / "hostile"
    folder.mkdir()
    built = cases(folder) + more_cases(folder)

    def timed(run: Callable[[], Result]) -> tuple[bool, str, float]:
        start = time.perf_counter()
        ok, detail = run()
        return ok, detail, time.perf_counter() - start

    jobs: list[tuple[str, Callable[[], Result]]] = [(f"hostile {c.name}", lambda c=c: run_case(c)) for c in built]
    (work / "race").mkdir()
    jobs.append(("hostile write: two compresses, one new --out", lambda: race(work / "race")))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: timed(job[1]), jobs))
    rows = []
    for (name, _), (ok, detail, took) in zip(jobs, results, strict=True):
        rows.append((name, "PASS" if ok else "FAIL", f"{took:.1f}s", detail))
        print(f"{name}: {rows[-1][1]} ({rows[-1][2]})", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="slimkit safety checks (issue 8)")
    parser.add_argument("--fuzz-runs", type=int, default=2000, help="mutated artifacts to load (default 2000)")
    parser.add_argument("--fuzz-seed", type=int, default=None, help="mutator seed (default: the clock)")
    parser.add_argument("--tree-cases", type=int, default=300,
                        help="structure-aware fuzz cases (.slim, recipes, HF configs; default 300)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 during save, how many times (default 3)")
    parser.add_argument("--only", choices=["hostile", "tree"], default=None, help="run only these rows")
    args = parser.parse_args(argv)
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    seed = args.fuzz_seed if args.fuzz_seed is not None else int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checks: list[tuple[str, Callable[[], Result]]] = [
            ("pickles executed", lambda: check_pickles(work)),
            ("fuzzed artifacts", lambda: check_fuzz(args.fuzz_runs, seed)),
            ("tree-fuzzed inputs", lambda: check_tree_fuzz(args.tree_cases, seed)),
            ("kill -9 during save", lambda: check_kill(work, args.kills)),
            ("ONNX parity", lambda: check_onnx(work)),
        ]
        rows = []
        chosen = checks if args.only is None else [c for c in checks if args.only == "tree" and c[0].startswith("tree")]
        for name, run in chosen:
            start = time.perf_counter()
            try:
                ok, detail = run()
            except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check
                ok, detail = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            rows.append((name, "PASS" if ok else "FAIL", f"{time.perf_counter() - start:.1f}s", detail))
            print(f"{name}: {rows[-1][1]} ({rows[-1][2]})", file=sys.stderr, flush=True)
        try:
            rows += hostile_rows(work) if args.only != "tree" else []
        except Exception as exc:  # noqa: BLE001 - cases that cannot even be built are a failed check
            rows.append(("hostile inputs", "FAIL", "-", f"{type(exc).__name__}: {str(exc).strip()[:200]}"))
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  result  time    detail")
    for name, result, took, detail in rows:
        print(f"{name:<{width}}  {result:<6}  {took:<6}  {detail}")
    failed = [r[0] for r in rows if r[1] != "PASS"]
    print(f"{len(rows) - len(failed)}/{len(rows)} safety checks passed" + (f"; failed: {', '.join(failed)}"
                                                                           if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
