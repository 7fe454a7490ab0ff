"""Run the `slimkit` CLI in process through its real entry point and capture what it prints.

>>> code, out, err = cli(monkeypatch, capsys, "eval", "builtin:lenet-300-100", "--json")
"""

from __future__ import annotations

import sys

from slimkit.cli.main import run


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `slimkit ARGS`."""
    monkeypatch.setattr(sys, "argv", ["slimkit", *args])
    code = 0
    try:
        run()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err
