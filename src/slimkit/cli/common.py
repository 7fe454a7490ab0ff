"""Shared CLI state and helpers: one-line errors, progress, JSON output, safe output paths."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from slimkit.core.errors import SlimError


@dataclass
class _State:
    quiet: bool = False
    debug: bool = False


STATE = _State()
console = Console(stderr=True, highlight=False)
# Tables printed to a pipe or a CI log are not squeezed into 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def fail(message: str, code: int = 2) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"slimkit: error: {first}", file=sys.stderr)
    sys.exit(code)


def info(message: str) -> None:
    if not STATE.quiet:
        console.print(message)


@contextmanager
def status(message: str):
    """A spinner for steps longer than a second (silent with --quiet)."""
    if STATE.quiet or not console.is_terminal:
        if not STATE.quiet:
            console.print(f"[dim]{message}[/dim]")
        yield
        return
    with console.status(message):
        yield


def emit_json(obj: dict) -> None:
    """Print one JSON object as the last line of stdout."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def check_out_path(out_path: Path, inputs: list[str], force: bool) -> None:
    """Refuse to overwrite an input or, without --force, any existing file."""
    resolved = out_path.resolve()
    for ref in inputs:
        if Path(ref).exists() and Path(ref).resolve() == resolved:
            raise SlimError(f"--out {out_path} is the input file; choose another output path")
    if out_path.exists() and not force:
        raise SlimError(f"{out_path} already exists; pass --force to replace it")
    if not resolved.parent.is_dir():
        raise SlimError(f"cannot write {out_path}: folder {out_path.parent} does not exist")


def fmt_bytes(n: int) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
