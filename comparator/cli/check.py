"""``dumpcmp check RUN``: what one run shows about itself, with no baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from comparator.cli.app import ReportFormat, app, setup_logging, user_errors

if TYPE_CHECKING:
    from comparator.check import CheckReport


CheckFormat = ReportFormat  # one choice of formats for compare and check


@app.command("check")
def check_command(
    run_dir: Path = typer.Argument(..., help="The run directory to check (the one holding run.json)."),
    format: CheckFormat = typer.Option(
        CheckFormat.table, "--format", "-f", help="table for people, json for scripts, junit for CI, html for a page."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file instead of stdout."),
    thresholds: Optional[Path] = typer.Option(
        None, "--thresholds", "-t", help="YAML rules as for compare; their replica_rel_diff limits judge replicas."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is being done."),
) -> None:
    """Check one run with no baseline: replicated tensors whose ranks disagree, partial-sum
    shards whose sum is implausible, the first NaN/Inf (and the collective that spread it),
    ranks that ran other collectives than their peers, ranks, steps or shards missing.

    Stats-mode runs get the checks stats allow (replicas by checksum and stats, no
    cancelling partial sums). docs/check.md says what each check looks for.

    Exit codes: 0 clean; 1 a finding; 2 bad input or usage; 3 nothing was checked.

    Examples:

      dumpcmp check runs/tp2ep2

      dumpcmp check runs/tp2ep2 --format junit --output check.xml
    """
    setup_logging(verbose)
    import logging

    with user_errors():
        from comparator.check import CheckOptions, check_run
        from comparator.judge.thresholds import load_thresholds

        options = CheckOptions(thresholds=load_thresholds(thresholds))
        if not verbose:
            logging.getLogger("dumper.reader").setLevel(logging.ERROR)  # the gaps check lists the problems
        report = check_run(run_dir, options=options)
        emit_check(report, format.value, output)
    raise typer.Exit(report.exit_code)


def emit_check(report: "CheckReport", format: str, output: Optional[Path]) -> None:
    from comparator.check import render
    from comparator.errors import OptionError

    if format == "table" and output is None:
        render.render_check_table(report)
        return
    text = {"json": render.render_check_json, "junit": render.render_check_junit, "html": render.render_check_html,
            "table": render.render_check_text}[format](report)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"{output}: cannot write the report ({exc.strerror})") from None
