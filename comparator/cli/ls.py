"""``dumpcmp ls RUN``: what a run holds and what is missing."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from comparator.cli.app import app, setup_logging, user_errors


class LsFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("ls")
def ls_command(
    run_dir: Path = typer.Argument(..., help="Run directory (the one holding run.json), or an SGLang dump directory."),
    format: LsFormat = typer.Option(LsFormat.table, "--format", "-f", help="table for people, json for scripts."),
) -> None:
    """List a run's ranks, steps and tensors (names, tags, shapes, dtypes, bytes), and what is missing.

    Problems (absent ranks, ranks that stop early, torn index lines, ranks that did
    not close) are listed, not fatal: a crashed run can still be inspected.

    Example: dumpcmp ls /tmp/runs/tp2 --format json | jq .problems
    """
    setup_logging()
    from comparator.inspect.inventory import summarize_run
    from dumper.reader import open_run

    with user_errors():
        # The summary reports problems itself; keep the reader's warnings quiet.
        import logging

        logging.getLogger("dumper.reader").setLevel(logging.ERROR)
        with open_run(run_dir, index="summary") as run:
            summary = summarize_run(run)
    if format is LsFormat.json:
        typer.echo(json.dumps(summary.to_json(), indent=1))
        return
    from comparator.inspect.render_ls import render_summary

    render_summary(summary)
