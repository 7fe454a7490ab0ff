"""The `slimkit` command. Each subcommand lives in its own module and only parses, calls the
public API and saves. Errors a user can act on print one line and exit with code 2."""

from __future__ import annotations

import io
import logging
import sys
import warnings

import typer

from slimkit.cli import common, compress, demo, evaluate, export, generate, inspect, recipes, search
from slimkit.core.errors import SlimError
from slimkit.core.text import clean

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained neural networks smaller and faster, and measure it honestly.")


@app.callback()
def _root(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
          debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    common.STATE.quiet = quiet
    common.STATE.debug = debug


def _register() -> None:
    for module in (demo, compress, evaluate, inspect, export, generate, recipes, search):
        module.register(app)


_register()


class _CleanHandler(logging.Handler):
    """slimkit's warnings on (the current) stderr with control characters escaped: layer names
    and other strings in them come from files."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(clean(self.format(record)) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _clean_logs() -> None:
    """Route the `slimkit` loggers' warnings through `_CleanHandler` (in place of logging's raw
    last-resort handler); records still propagate to any handler the caller set up."""
    logger = logging.getLogger("slimkit")
    if not any(isinstance(h, _CleanHandler) for h in logger.handlers):
        handler = _CleanHandler()
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one clean line (`warning: ...`), not logging's file:line plus source."""
    text = " ".join(str(message).split())
    (file or sys.stderr).write(clean(f"warning: {text}") + "\n")


def run() -> None:
    """Console-script entry point."""

    _clean_logs()
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        _run()
    finally:
        warnings.showwarning = shown


def _run() -> None:
    try:
        code = app(standalone_mode=False)   # typer.Exit(n) comes back as a return value here
        if isinstance(code, int) and code:
            sys.exit(code)
    except SlimError as exc:
        if common.STATE.debug:
            raise
        common.fail(str(exc))
    except KeyboardInterrupt:
        common.fail("interrupted")
    except OSError as exc:   # a file or folder named by the user that cannot be read or written
        if common.STATE.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        common.fail(f"{where}{exc.strerror or exc.__class__.__name__}")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        common.fail("aborted")
    except Exception as exc:  # click usage errors and the like
        if _usage_error(exc):
            shown = io.StringIO()
            exc.show(file=shown)
            sys.stderr.write("".join(clean(line) + "\n" for line in shown.getvalue().splitlines()))
            sys.exit(2)
        if common.STATE.debug:
            raise
        common.fail(f"internal error: {exc.__class__.__name__}: {exc} (run with --debug for details)",
                    code=1)


def _usage_error(exc: Exception) -> bool:
    """A click usage error (missing option, bad value): typer >= 0.29 vendors its own click."""
    import click

    kinds: tuple[type, ...] = (click.ClickException,)
    try:
        from typer._click import ClickException as VendoredClickException

        kinds += (VendoredClickException,)
    except ImportError:
        pass
    return isinstance(exc, kinds) and hasattr(exc, "show")


if __name__ == "__main__":
    run()
