"""``dumpcmp bisect BASELINE --patch P -- CMD``: every independent divergence, one graft at a time."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from comparator.cli.app import app, setup_logging, user_errors

if TYPE_CHECKING:
    from comparator.cli.bisecting import BisectResult


class BisectFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("bisect")
def bisect_command(
    baseline: Path = typer.Argument(..., help="The trusted run directory (tensor mode)."),
    command: List[str] = typer.Argument(..., metavar="-- CMD...", help="The target command, after '--'."),
    patch: List[str] = typer.Option(
        [], "--patch", "-p", metavar="F", help="Patch file or preset with graft points (graft: true); repeatable."),
    dir: Optional[Path] = typer.Option(None, "--dir", "-d", help="Where the runs go: DIR/run-0, DIR/run-1, ... "
                                       "(default: ./dumpcmp-bisect-<time>)."),
    budget: int = typer.Option(4, "--budget", metavar="N", help="Reruns with grafts, at most."),
    aligner: str = typer.Option("none", "--aligner", "-a", help="Token aligner of the comparisons (and grafts)."),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", "-t", help="YAML rules, as for compare."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the runs already in --dir."),
    format: BisectFormat = typer.Option(BisectFormat.table, "--format", "-f", help="table for people, json for scripts."),
) -> None:
    """Find every independent divergence of CMD's run from BASELINE, in order.

    Runs CMD with dumping on and compares it with BASELINE; while they disagree, grafts
    the baseline's value at the first divergence (that site, every step; earlier grafts
    stay), reruns CMD and compares again, until the run agrees or --budget reruns are
    spent. Prints each divergence found with its hint. The sites must be graft points of
    the patch (graft: true, docs/graft.md).

    Exit code: 0 when the last run agrees (every divergence found explains the rest); 1
    when the budget ran out or a divergence could not be grafted away; 2 bad input.

    Example: dumpcmp bisect runs/base --patch example/moe_engine -- python -m examples.moe_engine --tp 2 --ep 2
    """
    setup_logging()
    from comparator.cli.bisecting import BisectConfig, bisect, default_bisect_dir

    with user_errors():
        config = BisectConfig(
            baseline=str(baseline), command=tuple(command), dir=str(dir) if dir is not None else default_bisect_dir(),
            patch_files=tuple(patch), budget=budget, aligner=aligner,
            thresholds=str(thresholds) if thresholds is not None else None, overwrite=overwrite,
        )
        result = bisect(config, echo=lambda line: typer.echo(f"dumpcmp bisect: {line}", err=True))
    if format == BisectFormat.json:
        typer.echo(json.dumps(result.to_json(), indent=1))
    else:
        typer.echo(render_bisect(result))
    raise typer.Exit(result.exit_code)


def render_bisect(result: "BisectResult") -> str:
    lines = [f"{len(result.divergences)} independent divergence(s), in order:" if result.divergences
             else "no divergence: the run agrees with the baseline"]
    for number, found in enumerate(result.divergences, start=1):
        lines.append(f"  {number}. {found.label}  (run {found.run})")
        if found.hint:
            lines.append(f"     hint: {found.hint}")
    lines.append(result.stopped)
    return "\n".join(lines)
