"""The typer application and the one place user errors become one-line messages."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

import typer

app = typer.Typer(
    name="dumpcmp",
    help=(
        "Find where two runs of an LLM inference engine stop agreeing.\n\n"
        "Dump tensors from a baseline and a target run (dumpcmp run), then ask which "
        "tensor diverges first, on which rank and step, and why (dumpcmp compare)."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> "typer.Exit":
    """Print ``dumpcmp: error: message`` on stderr and return the Exit to raise."""
    typer.echo(f"dumpcmp: error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors a user can cause into one line on stderr and exit code 2."""
    from dumper.errors import DumpcmpError

    try:
        yield
    except DumpcmpError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        typer.echo("dumpcmp: interrupted", err=True)
        raise typer.Exit(130) from None


def setup_logging(verbose: bool = False) -> None:
    """Only the CLI installs handlers; the library just logs."""
    from rich.logging import RichHandler

    handler = RichHandler(show_time=False, show_path=False, markup=False, console=_stderr_console())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], format="%(message)s")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _print_version(value: bool) -> None:
    if value:
        from dumper.format import TOOL_VERSION

        typer.echo(f"dumpcmp {TOOL_VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Find where two runs of an LLM inference engine stop agreeing."""
