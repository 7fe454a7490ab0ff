"""The `slimkit` command. Each subcommand lives in its own module and only parses, calls the
public API and saves. Errors a user can act on print one line and exit with code 2."""

from __future__ import annotations

import sys

import typer

from slimkit.cli import common, compress, demo, evaluate, export, inspect, recipes, search
from slimkit.core.errors import SlimError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained neural networks smaller and faster, and measure it honestly.")


@app.callback()
def _root(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
          debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    common.STATE.quiet = quiet
    common.STATE.debug = debug


def _register() -> None:
    for module in (demo, compress, evaluate, inspect, export, recipes, search):
        module.register(app)


_register()


def run() -> None:
    """Console-script entry point."""

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
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        common.fail("aborted")
    except Exception as exc:  # click usage errors and the like
        if _usage_error(exc):
            exc.show()
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
