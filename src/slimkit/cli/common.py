"""Shared CLI state and helpers: one-line errors, progress, JSON output, safe output paths.

Every string printed here may come from a file (a path, a manifest's layer names, a recipe's
values), so the helpers print it as plain text: control characters escaped by
`slimkit.core.text.clean`, `[...]` never read as rich markup, `:name:` never turned into an emoji.
Subcommands print through `say`, `info`, `warn`, `status` and `table`, never markup of their own."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from slimkit.core.errors import SlimError
from slimkit.core.text import clean
from slimkit.io.safetensors_file import check_writable, probe_folder


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
    console.print(Text.assemble(("warning: ", "yellow"), plain(message)), soft_wrap=True)   # one line, unwrapped


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


def check_out_path(out_path: Path, inputs: list[str], force: bool, flag: str = "--out") -> None:
    """Refuse, before any work, an output that cannot or must not be written: a folder, a missing or
    read-only folder, any input (the model, a file of its folder, the recipe: the same file by any
    name), or without --force an existing file. The final rename checks again (another process may
    create the file meanwhile): `save(..., overwrite=False)`."""
    for ref in inputs:
        p = Path(ref)
        if not p.exists():
            continue
        if p.resolve() == out_path.resolve() or (out_path.exists() and os.path.samefile(p, out_path)):
            raise SlimError(f"{flag} {out_path} is an input ({ref}); choose another output path")
        if p.is_dir() and os.path.lexists(out_path) and out_path.resolve().is_relative_to(p.resolve()):
            raise SlimError(f"{flag} {out_path} is a file of the input folder {ref}; choose another output path")
    check_writable(out_path, overwrite=force)


def check_out_folder(folder: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    if folder.exists() and not folder.is_dir():
        raise SlimError(f"{flag} {folder} is a file, not a folder")
    parent = folder if folder.is_dir() else next((p for p in folder.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise SlimError(f"cannot create {flag} {folder}: {parent} is not a folder")
    why = probe_folder(parent)
    if why:
        raise SlimError(f"cannot write {flag} {folder}: {parent}: {why}")


def fmt_bytes(n: int) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
