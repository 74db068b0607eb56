"""The ``dumpcmp`` command line: a thin typer layer over the library.

Each command lives in its own module and registers itself on ``app``. Command
modules import torch and the heavy parts of the library inside the command
function, so that ``dumpcmp --help`` starts fast.
"""

from __future__ import annotations

import sys

import typer

from comparator.cli.app import EXIT_USAGE, app, reflow_command_help
from comparator.cli import bisect as _bisect  # noqa: F401  (registers the command)
from comparator.cli import calibrate as _calibrate  # noqa: F401  (registers the command)
from comparator.cli import check as _check  # noqa: F401  (registers the command)
from comparator.cli import compare as _compare  # noqa: F401  (registers the command)
from comparator.cli import demo as _demo  # noqa: F401  (registers the command)
from comparator.cli import gate as _gate  # noqa: F401  (registers the command)
from comparator.cli import ls as _ls  # noqa: F401  (registers the command)
from comparator.cli import patch as _patch  # noqa: F401  (registers the command)
from comparator.cli import run as _run  # noqa: F401  (registers the command)
from comparator.cli import show as _show  # noqa: F401  (registers the command)

reflow_command_help(app)

__all__ = ["app", "main"]


def main() -> None:
    """The console script: usage errors are one line on stderr and exit code 2, like every user error."""
    try:
        code = app(prog_name="dumpcmp", standalone_mode=False)
    except _usage_errors() as exc:
        sys.exit(_report_usage_error(exc))
    except typer.Abort:
        sys.stderr.write("dumpcmp: interrupted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_errors() -> tuple[type[Exception], ...]:
    # NOTE: typer >= 0.20 vendors click (its errors derive from typer.TyperException);
    # older typer raises click's own ClickException.
    kinds: list[type[Exception]] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return tuple(kinds)


def _report_usage_error(exc: Exception) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")  # `dumpcmp compare` alone: its help, as before
        return 0
    command = ctx.command_path if ctx is not None else "dumpcmp"
    format_message = getattr(exc, "format_message", None)
    message = " ".join((format_message() if format_message else str(exc)).split()).replace("Value error, ", "")
    # NOTE: one line, as for every error a user can fix; the framework's own rendering is
    # a boxed, multi-line panel that CI logs and `2>&1 | tail -1` handle badly.
    sys.stderr.write(f"{command}: error: {message} (see '{command} -h')\n")
    return EXIT_USAGE
