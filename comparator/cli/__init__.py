"""The ``dumpcmp`` command line: a thin typer layer over the library.

Each command lives in its own module and registers itself on ``app``. Command
modules import torch and the heavy parts of the library inside the command
function, so that ``dumpcmp --help`` starts fast.
"""

from __future__ import annotations

from comparator.cli.app import app
from comparator.cli import calibrate as _calibrate  # noqa: F401  (registers the command)
from comparator.cli import compare as _compare  # noqa: F401  (registers the command)
from comparator.cli import demo as _demo  # noqa: F401  (registers the command)
from comparator.cli import ls as _ls  # noqa: F401  (registers the command)
from comparator.cli import patch as _patch  # noqa: F401  (registers the command)
from comparator.cli import run as _run  # noqa: F401  (registers the command)
from comparator.cli import show as _show  # noqa: F401  (registers the command)

__all__ = ["app", "main"]


def main() -> None:
    app()
