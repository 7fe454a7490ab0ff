"""Shared CLI state and helpers: one-line errors, progress, JSON output, safe output paths.

Every string printed here may come from a file (a path, a manifest's layer names, a recipe's
values), so the helpers print it as plain text: control characters escaped by
`slimkit.core.text.clean`, `[...]` never read as rich markup, `:name:` never turned into an emoji.
Subcommands print through `say`, `info`, `warn`, `status` and `table`, never markup of their own."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from slimkit.core.errors import SlimError
from slimkit.core.text import clean


@dataclass
class _State:
    quiet: bool = False
    debug: bool = False


STATE = _State()
console = Console(stderr=True, highlight=False, emoji=False)
# Tables printed to a pipe or a CI log are not squeezed into 80 columns.
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)


def fail(message: str, code: int = 2) -> None:
    """Print `slimkit: error: <first line of message>` (control characters escaped) and exit."""
    first = next((line for line in str(message).strip().splitlines() if line.strip()), "error")
    print(f"slimkit: error: {clean(first)}", file=sys.stderr)
    sys.exit(code)


def plain(value: object, style: str | None = None) -> Text:
    """`value` as rich text that is never markup and never a terminal control sequence."""
    return Text(clean(value), style=style or "")


def say(message: str) -> None:
    """One result line on stdout, as plain text."""
    out.print(plain(message))


def info(message: str, style: str | None = None) -> None:
    """A progress line on stderr (silent with --quiet), as plain text."""
    if not STATE.quiet:
        console.print(plain(message, style))


def warn(message: str) -> None:
    """`warning: message` on stderr."""
    console.print(Text.assemble(("warning: ", "yellow"), plain(message)))


def table(title: str, columns: list[str], rows: list[list[object]], **column_options) -> Table:
    """A rich table whose title and cells are plain text (see `plain`)."""
    grid = Table(title=plain(title))
    for col in columns:
        grid.add_column(col, **column_options.get(col, {}))
    for row in rows:
        grid.add_row(*(plain("" if c is None else c) for c in row))
    return grid


@contextmanager
def status(message: str):
    """A spinner for steps longer than a second (silent with --quiet)."""
    if STATE.quiet or not console.is_terminal:
        if not STATE.quiet:
            console.print(plain(message, "dim"))
        yield
        return
    with console.status(plain(message)):
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
