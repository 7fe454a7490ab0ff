"""One reader of Linux's /proc size fields ("VmHWM:   12345 kB", "MemAvailable: ..."), for the
memory rules and the benchmarks that measure peak RSS.

>>> proc_bytes("/proc/meminfo", "MemAvailable") > 0
True
"""

from __future__ import annotations


def proc_bytes(path: str, field: str) -> int | None:
    """The `field` line of /proc file `path` (a size in kB) in bytes; None where there is no such file,
    field or number (another OS, a process that has ended)."""
    prefix = field + ":"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
