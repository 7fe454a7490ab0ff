"""Peak resident memory of a child process (`ru_maxrss` of exactly that child, via `os.wait4`).

>>> code, peak, seconds = run_measured([sys.executable, "-m", "slimkit", "compress", ...])
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None
                 ) -> tuple[int, int, float, str]:
    """Run `cmd`; return (exit code, peak RSS in bytes, wall seconds, its stderr's last line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stderr:
        proc.stderr.close()
    scale = 1 if sys.platform == "darwin" else 1024   # Linux reports KiB, macOS bytes
    lines = err.strip().splitlines()
    return proc.returncode, usage.ru_maxrss * scale, time.perf_counter() - start, lines[-1] if lines else ""
