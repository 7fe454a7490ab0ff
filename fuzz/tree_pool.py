"""The tree fuzzer's pool of worker processes (`fuzz/tree_fuzz.py --worker`): requests out on stdin,
JSON messages back on stdout, and the wall-clock limits that make a case a hang.

A worker says {"ready": true} once; per request, {"started": i} when it has written the case, then the
reply. The wall limit (`wall_limit`, a hang) counts from "started": the seconds the fuzzer takes to
write a case are its own, bounded apart by WRITE_LIMIT_S (a "WriterHang").

>>> pool = Pool(2, seed_dir, master=0, time_limit=10.0, wall_limit=60.0)   # doctest: +SKIP
>>> for reply in pool.run({"i": i} for i in range(100)): ...              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER_SCRIPT = HERE / "tree_fuzz.py"
WRITE_LIMIT_S = 600.0           # wall seconds the fuzzer itself may take to write one case


class Worker:
    """One worker process and the request it runs. Messages, one JSON line each: {"ready": true} once,
    then per request {"started": i} when the case is written (not for a case it could not write) and
    the reply."""

    def __init__(self, seed_dir: Path, master: int, time_limit: float):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
        # stdout unbuffered: `lines` reads what the pipe holds, so select() never misses a line that a
        # buffered reader had already taken in
        self.proc = subprocess.Popen(self.command(seed_dir, master, time_limit),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, bufsize=0)
        self.request: dict | None = None
        self.sent = 0.0
        self.started = False   # the case is written and running (the wall limit applies from then)
        self.pending = b""

    @staticmethod
    def command(seed_dir: Path, master: int, time_limit: float) -> list[str]:
        return [sys.executable, str(WORKER_SCRIPT), "--worker", str(seed_dir), "--seed", str(master),
                "--time-limit", str(time_limit)]

    def lines(self) -> list[dict] | None:
        """The complete messages the pipe holds now (call when select() says it is readable); None
        when the worker has exited."""
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not chunk:
            return None
        *done, self.pending = (self.pending + chunk).split(b"\n")
        return [json.loads(line) for line in done if line.strip()]

    def wait_ready(self) -> Worker:
        got: list[dict] = []
        while not got:
            more = self.lines()
            if more is None:
                raise RuntimeError("a fuzz worker did not start")
            got += more
        if not got[0].get("ready"):
            raise RuntimeError("a fuzz worker did not start")
        return self

    def send(self, request: dict) -> None:
        self.request, self.sent, self.started = request, time.monotonic(), False
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Pool:
    """`size` persistent workers; `run(requests)` yields one reply per request, a worker that dies or
    runs past `wall_limit` is replaced (the reply says so)."""

    worker = Worker

    def __init__(self, size: int, seed_dir: Path, master: int, time_limit: float, wall_limit: float):
        self.args = (seed_dir, master, time_limit)
        self.wall_limit = wall_limit
        self.workers = [w.wait_ready() for w in [self.worker(*self.args) for _ in range(size)]]

    def run(self, requests):
        pending = iter(requests)
        idle = list(self.workers)
        busy: dict[int, Worker] = {}
        exhausted = False
        while True:
            while idle and not exhausted:
                req = next(pending, None)
                if req is None:
                    exhausted = True
                    break
                w = idle.pop()
                w.send(req)
                busy[w.proc.stdout.fileno()] = w
            if not busy:
                return
            ready, _, _ = select.select(list(busy), [], [], 1.0)
            for fd in ready:
                w = busy[fd]
                messages = w.lines()
                if messages is None:
                    del busy[fd]
                    code = w.proc.wait()
                    yield {**w.request, "outcome": "finding", "error": f"Crash: worker exited with {code}"}
                    idle.append(self._replace(w))
                    continue
                for msg in messages:
                    if "started" in msg:   # the case is written: its run starts the wall clock
                        w.sent, w.started = time.monotonic(), True
                        continue
                    del busy[fd]
                    idle.append(w)
                    yield msg
                    break   # one reply per request
            now = time.monotonic()
            for fd, w in list(busy.items()):
                limit = self.wall_limit if w.started else WRITE_LIMIT_S
                if now - w.sent > limit:
                    del busy[fd]
                    w.kill()
                    error = f"Hang: killed after {limit:g} s" if w.started else \
                        f"WriterHang: the fuzzer took more than {limit:g} s to write the case"
                    yield {**w.request, "outcome": "finding", "error": error}
                    idle.append(self._replace(w))

    def _replace(self, w: Worker) -> Worker:
        self.workers.remove(w)
        fresh = self.worker(*self.args).wait_ready()
        self.workers.append(fresh)
        return fresh

    def close(self) -> None:
        for w in self.workers:
            w.proc.stdin.close()
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
