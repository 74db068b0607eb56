"""The console every report and listing prints to: fits a terminal, never cuts piped output.

A terminal gets tables that fit its width (low-value columns are dropped first, long
cells wrap). Piped output (a CI log, a file) has no width to fit, so sentences are
printed whole and table cells wrap instead of being cut; ``COLUMNS`` sets the width
tables are laid out for (default 120 when piped).
"""

from __future__ import annotations

import os
import sys
from typing import IO

from rich.console import Console

PIPED_WIDTH = 120


def columns_setting() -> int | None:
    """``COLUMNS`` as a positive int, or None when unset or not a number."""
    text = os.environ.get("COLUMNS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def output_console(*, stderr: bool = False, file: IO[str] | None = None) -> Console:
    stream = file or (sys.stderr if stderr else sys.stdout)
    if stream.isatty():
        return Console(file=stream, highlight=False)
    # NOTE: soft_wrap keeps prose on whole lines (the log viewer wraps them); tables
    # still lay out for `width` and fold cells that do not fit.
    return Console(file=stream, width=columns_setting() or PIPED_WIDTH, soft_wrap=True, highlight=False)
