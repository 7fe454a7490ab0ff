"""Peak resident memory of a child process.

On Linux the child's own high-water mark (`VmHWM` in /proc/PID/status) is polled while it runs:
it belongs to the program the child executes, whereas `ru_maxrss` also keeps the resident size of
the forked copy of the parent from before `exec` (a 4 GB benchmark process made a 270 MB child
read 4.2 GB). Elsewhere `ru_maxrss` of exactly that child (via `os.wait4`) is used.

>>> from bench.rss import run_measured
>>> code, peak, seconds, last_line = run_measured([sys.executable, "-m", "slimkit", "compress", ...])
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from slimkit.core.procfs import proc_bytes


def _hwm_bytes(pid: int) -> int | None:
    return proc_bytes(f"/proc/{pid}/status", "VmHWM")


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None
                 ) -> tuple[int, int, float, str]:
    """Run `cmd`; return (exit code, peak RSS in bytes, wall seconds, its stderr's last line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    polled = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            hwm = _hwm_bytes(proc.pid)
            if hwm:
                polled[0] = max(polled[0], hwm)
            done.wait(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    if sys.platform.startswith("linux"):
        watcher.start()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    hwm = _hwm_bytes(proc.pid)           # after stderr closes the child is exiting; last look
    if hwm:
        polled[0] = max(polled[0], hwm)
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    if watcher.is_alive():
        watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stderr:
        proc.stderr.close()
    scale = 1 if sys.platform == "darwin" else 1024   # Linux reports KiB, macOS bytes
    peak = polled[0] or usage.ru_maxrss * scale
    lines = err.strip().splitlines()
    return proc.returncode, peak, time.perf_counter() - start, lines[-1] if lines else ""
