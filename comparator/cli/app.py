"""The typer application and the one place user errors become one-line messages."""

from __future__ import annotations

import contextlib
import logging
from enum import Enum
from typing import Any, Iterator

import typer

def _tidy_typer_help() -> None:
    """Usage lines and help as users expect them: ``BASELINE TARGET``, no ``<bool>`` beside flags.

    NOTE: typer 0.2x renders a required argument as ``{baseline}`` in the usage line and
    prints ``<bool>`` as the type of every flag; both read as template leftovers. These
    two display methods are all that changes; parsing is untouched, and an older or newer
    typer without them is left alone.
    """
    from typer import core

    argument, option = getattr(core, "TyperArgument", None), getattr(core, "TyperOption", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):
        def usage_name(self: Any) -> str:
            name = self.metavar or (self.name or "").upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")

        argument._usage_display_name = usage_name
    if option is not None and hasattr(option, "display_type_rich"):
        shown = option.display_type_rich

        def type_unless_flag(self: Any, ctx: Any) -> str | None:
            return None if getattr(self, "is_flag", False) or getattr(self, "count", False) else shown(self, ctx)

        option.display_type_rich = type_unless_flag


_tidy_typer_help()

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


class ReportFormat(str, Enum):
    """The formats a comparison or a check renders to (comparator/report/, comparator/check/render.py)."""

    table = "table"
    json = "json"
    junit = "junit"
    html = "html"


def fail(message: str, code: int = EXIT_USAGE) -> "typer.Exit":
    """Print ``dumpcmp: error: message`` on stderr and return the Exit to raise."""
    from comparator.report.text import one_line

    # NOTE: messages quote user text (names, paths): escaped, it stays one line and no
    # escape sequence reaches the terminal.
    typer.echo(f"dumpcmp: error: {one_line(message)}", err=True)
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
    handler.addFilter(_printable_record)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], format="%(message)s")


def _printable_record(record: logging.LogRecord) -> bool:
    """Warnings quote names and paths from runs: no raw control characters to the terminal."""
    from comparator.report.text import printable

    message = record.getMessage()
    safe = printable(message)
    if safe != message:
        record.msg, record.args = safe, None
    return True


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


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


def reflow_help(doc: str) -> str:
    """A docstring's paragraphs as single lines, so help wraps at the terminal, not at the source's 80 columns.

    Indented lines (examples, tables) and blank lines keep their breaks.
    """
    import inspect

    paragraphs: list[str] = []
    for line in inspect.cleandoc(doc).splitlines():
        starts_block = not line.strip() or line.startswith(" ") or not paragraphs or not paragraphs[-1].strip() \
            or paragraphs[-1].startswith(" ")
        if starts_block:
            paragraphs.append(line)
        else:
            paragraphs[-1] += " " + line.strip()
    return "\n".join(paragraphs)


def reflow_command_help(typer_app: typer.Typer) -> None:
    """Reflow the help of every command registered on ``typer_app`` (and its sub-apps)."""
    for command in typer_app.registered_commands:
        doc = command.help or (command.callback.__doc__ if command.callback is not None else None)
        if doc:
            command.help = reflow_help(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_command_help(group.typer_instance)
