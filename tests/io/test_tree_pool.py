"""The tree fuzzer's worker pool (`fuzz/tree_pool.py`): a case is a hang only when it runs past the wall
limit after its worker said "started"; the seconds the fuzzer takes to write a case do not count, and
two messages that arrive together are both read. Fake workers stand in for slimkit's, so the test
times the pool's protocol alone."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fuzz.tree_pool import Pool, Worker  # noqa: E402

# a worker that, per request, "writes" for WRITE s, says started, "runs" for RUN s and replies; the
# started line and the reply leave in one write when RUN is 0 (both reach the pool in one read)
FAKE = textwrap.dedent("""
    import json, os, sys, time
    write, run = float(sys.argv[1]), float(sys.argv[2])
    os.write(1, b'{"ready": true}\\n')
    for line in sys.stdin:
        i = json.loads(line)["i"]
        time.sleep(write)
        started = json.dumps({"started": i}) + "\\n"
        reply = json.dumps({"i": i, "outcome": "refused"}) + "\\n"
        if run:
            os.write(1, started.encode())
            time.sleep(run)
            os.write(1, reply.encode())
        else:
            os.write(1, (started + reply).encode())
""")


def fake_pool(tmp_path: Path, write: float, run: float, wall_limit: float) -> Pool:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE)

    class FakeWorker(Worker):
        @staticmethod
        def command(seed_dir, master, time_limit):
            return [sys.executable, str(script), str(write), str(run)]

    class FakePool(Pool):
        worker = FakeWorker

    return FakePool(1, tmp_path, 0, 10.0, wall_limit)


@pytest.mark.parametrize("run", [0.0, 0.3])   # 0: "started" and the reply arrive in one read
def test_the_time_to_write_a_case_is_no_hang_and_both_messages_of_one_read_are_seen(tmp_path, run):
    pool = fake_pool(tmp_path, write=1.3, run=run, wall_limit=1.0)
    try:
        replies = list(pool.run({"i": i} for i in range(2)))
    finally:
        pool.close()
    assert [(r["i"], r["outcome"]) for r in replies] == [(0, "refused"), (1, "refused")]


def test_a_case_running_past_the_wall_limit_after_it_started_is_a_hang(tmp_path):
    pool = fake_pool(tmp_path, write=0.0, run=30.0, wall_limit=1.0)
    try:
        (reply,) = list(pool.run([{"i": 7}]))
    finally:
        pool.close()
    assert reply["i"] == 7 and reply["outcome"] == "finding" and reply["error"] == "Hang: killed after 1 s"
